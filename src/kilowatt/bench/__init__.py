"""kilowatt.bench."""
