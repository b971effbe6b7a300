"""`gptkit doctor` (placeholder)."""

from gptkit.cli.options import not_implemented


def doctor():
    """Not implemented yet."""
    not_implemented("doctor", "see the issue tracker")
