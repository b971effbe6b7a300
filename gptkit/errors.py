"""The one exception type for mistakes a user can make and fix.

The CLI prints a GptkitError as one line on stderr and exits 1; anything else is a bug and keeps
its traceback. DiskError is the one kind a caller tells apart: the same work resumes once there is room.
"""


class GptkitError(Exception):
    """A user-facing error: the message says what went wrong and, where possible, the fix."""


class DiskError(GptkitError):
    """A full or read-only disk (gptkit.fsutil.disk_error): nothing was wrong with the input, so a
    training run's failure line adds where to resume from."""
