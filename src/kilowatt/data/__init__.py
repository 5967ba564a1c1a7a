"""kilowatt.data."""
