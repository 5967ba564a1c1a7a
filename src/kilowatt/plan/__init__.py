"""kilowatt.plan."""
