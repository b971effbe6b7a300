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


def find_run(spec: str, file_of: FileOfRun = _latest_checkpoint) -> Path | None:
    """A run given as a path or as a name under runs_dir(), the first of the two that holds a `file_of` file."""
    for cand in (Path(spec).expanduser(), paths.runs_dir(spec)):
        if cand.is_dir() and file_of(cand) is not None:
            return cand
    return None


MODEL_SUFFIXES = (".pt", ".safetensors", ".gguf", ".bin")


def looks_like_path(spec: str) -> bool:
    """Written as a path (./x, /x, ~/x, a model file's name): never read as a run or hub name."""
    return spec.startswith((".", "/", "~")) or Path(spec).suffix in MODEL_SUFFIXES


def run_checkpoint(spec: str) -> Path | None:
    """The latest checkpoint of the run `spec` names (a path or a name under runs_dir()), for commands
    that load a model from it; None if `spec` names no run. A run with no checkpoint yet is an error."""
    run = find_run(spec)
    if run is not None:
        return _latest_checkpoint(run)
    named = paths.runs_dir(spec)
    if (named / CONFIG_FILE).is_file():
        raise GptkitError(f"{spec}: the run {named} has no checkpoint yet; wait for its first one (--checkpoint-every)")
    return None
