"""`gptkit plot`: a PNG of a run's loss, learning rate and throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plot(
    run: Annotated[
        str | None, typer.Argument(help="Run directory or name under runs/ (default: the latest run).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE", help="PNG file (default: RUN/metrics.png).")
    ] = None,
):
    """Plot train/val loss, learning rate and tokens/s of a training run to a PNG."""
    from gptkit.train.plot import plot_run, resolve_run

    path = plot_run(resolve_run(run), out)
    print(path)
