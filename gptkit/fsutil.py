"""Crash-safe file writes shared by download, tokenize and checkpoints (stdlib only: tokenize's
worker processes import this, and must not pay for torch)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path


def write_json_atomic(path: Path, obj, *, indent: int = 2) -> None:
    """Write JSON under a temporary name (unique per process and thread), fsync, rename into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
