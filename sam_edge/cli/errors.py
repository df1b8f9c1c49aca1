"""The error a sub-command raises for a failure it has said in words."""


class CommandError(Exception):
    """A failure to report as `sam-edge: error: ...` with exit status 1."""
