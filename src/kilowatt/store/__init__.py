"""kilowatt.store."""
