"""`gptkit convert` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def convert():
    """Not implemented yet."""
    not_implemented("convert", "see the issue tracker")
