"""The ``plantpulse`` command line."""
