"""kilowatt.serve."""
