"""The ``wapool`` command line."""
