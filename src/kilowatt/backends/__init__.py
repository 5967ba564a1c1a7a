"""kilowatt.backends."""
