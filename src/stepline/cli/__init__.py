"""The ``stepline`` command line."""
