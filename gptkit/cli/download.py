"""`gptkit download` (placeholder until its issue lands)."""

from gptkit.cli.options import not_implemented


def download():
    """Not implemented yet."""
    not_implemented("download", "see the issue tracker")
