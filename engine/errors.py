"""The error that ends a run before any work: bad input, missing data, a locked run."""


class UsageError(Exception):
    """Bad command-line input or missing data/run: reported as one line, exit status 2."""
