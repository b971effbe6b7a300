"""`gptkit plot` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def plot():
    """Not implemented yet."""
    not_implemented("plot", "see the issue tracker")
