"""The one exception type for mistakes a user can make and fix.

The CLI prints a GptkitError as one line on stderr and exits 1; anything else is a bug and keeps
its traceback.
"""


class GptkitError(Exception):
    """A user-facing error: the message says what went wrong and, where possible, the fix."""
