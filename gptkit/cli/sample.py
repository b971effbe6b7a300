"""`gptkit sample` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def sample():
    """Not implemented yet."""
    not_implemented("sample", "see the issue tracker")
