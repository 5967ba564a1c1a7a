"""The ``kilowatt`` command line: thin commands that compose the rest of the package."""
