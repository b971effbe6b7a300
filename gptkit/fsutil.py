"""Crash-safe file writes shared by download, tokenize, checkpoints and convert (stdlib only: tokenize's
worker processes import this, and must not pay for torch)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
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


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write a file or directory at; when the block ends
    without an error, swap it into place with `replace_atomically`, else remove it."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    remove_path(tmp)
    try:
        yield tmp
        replace_atomically(tmp, final)
    finally:
        remove_path(tmp)


def replace_atomically(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. An existing `final` is moved aside first and deleted after, so at
    every moment `final` is either the whole old one or the whole new one, never a mix."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        remove_path(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        remove_path(old)
