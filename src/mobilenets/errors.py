"""Errors the CLI turns into one-line messages instead of tracebacks."""


class MobilenetsError(Exception):
    """A runtime failure with a message fit for the user (CLI exit code 1)."""


class UsageError(MobilenetsError, ValueError):
    """A bad argument: unknown model, out-of-range option (CLI exit code 2)."""
