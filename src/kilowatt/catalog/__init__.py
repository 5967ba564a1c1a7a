"""kilowatt.catalog."""
