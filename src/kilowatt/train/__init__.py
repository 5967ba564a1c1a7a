"""kilowatt.train."""
