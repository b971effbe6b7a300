"""`gptkit mirror` (placeholder until its issue lands)."""

import typer

from gptkit.cli.options import not_implemented

app = typer.Typer(help="Serve local repos as a Hugging Face mirror.", no_args_is_help=True)


@app.command("serve")
def serve():
    """Not implemented yet."""
    not_implemented("mirror serve", "see the issue tracker")
