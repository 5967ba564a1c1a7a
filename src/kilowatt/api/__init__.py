"""kilowatt.api."""
