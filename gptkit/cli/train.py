"""`gptkit train` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def train():
    """Not implemented yet."""
    not_implemented("train", "see the issue tracker")
