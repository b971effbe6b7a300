"""Training runs on disk: where they are, which is newest, and a run named by the user.

    $GPTKIT_HOME/runs/<name>/
        config.json         the resolved run (CONFIG_FILE): written by `gptkit train`, read by its workers
        metrics.jsonl       what training logged
        step_000500/ ...    checkpoints (gptkit.checkpoint)

What makes a directory count as a run differs by command (checkpoints to resume or sample from,
metrics to plot), so each caller says which file it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gptkit import paths
from gptkit.errors import GptkitError

CONFIG_FILE = "config.json"

# A run directory -> the file of interest in it (checkpoint, metrics), or None if it has none.
FileOfRun = Callable[[Path], Path | None]


def _latest_checkpoint(run: Path) -> Path | None:
    from gptkit.checkpoint import latest_checkpoint  # torch: only when a caller needs checkpoints

    return latest_checkpoint(run)


def newest_run(file_of: FileOfRun = _latest_checkpoint) -> Path | None:
    """The run under runs_dir() whose `file_of` file was written last (default: its latest checkpoint)."""
    root = paths.runs_dir()
    if not root.is_dir():
        return None
    found = []
    for run in root.iterdir():
        if run.is_dir() and not run.name.startswith("."):
            f = file_of(run)
            if f is not None:
                found.append((f.stat().st_mtime, run))
    return max(found)[1] if found else None


def named_run(name: str, file_of: FileOfRun = _latest_checkpoint) -> Path | None:
    """The run called `name` under runs_dir() if it holds a `file_of` file: a name, never a path
    (gptkit.names decides which a user meant)."""
    cand = paths.runs_dir(name)
    return cand if cand.is_dir() and file_of(cand) is not None else None


def run_checkpoint(name: str) -> Path | None:
    """The latest checkpoint of the run called `name` under runs_dir(), for commands that load a model
    from it; None if there is no such run. A run with no checkpoint yet is an error."""
    run = named_run(name)
    if run is not None:
        return _latest_checkpoint(run)
    named = paths.runs_dir(name)
    if (named / CONFIG_FILE).is_file():
        raise GptkitError(f"{name}: the run {named} has no checkpoint yet; wait for its first one (--checkpoint-every)")
    return None
