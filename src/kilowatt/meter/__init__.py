"""kilowatt.meter."""
