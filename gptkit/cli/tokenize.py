"""`gptkit tokenize` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def tokenize():
    """Not implemented yet."""
    not_implemented("tokenize", "see the issue tracker")
