"""The manifest of a download folder, and the file hashes it records.

`gptkit download` writes DIR/.gptkit-download.json: the repo, revision, commit and endpoint, and for
every file its size, sha256 and git blob id. Tokenize reads it to name its source, the sampler to know
a model folder is complete, and the mirror to serve the folder under its repo id without re-hashing.

The Hub names a file two ways: the git blob id (sha1 of "blob SIZE\\0" + content) for ordinary files,
and the sha256 of the content for LFS files, whose git blob id is that of their small pointer file.
`hash_file` computes both in one pass; it is the one hashing routine of gptkit.hub.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from gptkit.fsutil import write_json_atomic

MANIFEST_NAME = ".gptkit-download.json"
FORMAT = 1


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a download folder, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "repo_id" in data else None


def write_manifest(folder: Path, header: dict[str, Any], files: list[dict[str, Any]], complete: bool) -> None:
    """Replace the manifest atomically: `header` (repo_id, repo_type, revision, commit, ...), the file
    entries sorted by path, whether every selected file is in, and when."""
    data = {
        "format": FORMAT,
        "tool": "gptkit download",
        **header,
        "complete": complete,
        "updated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": sorted(files, key=lambda e: e["path"]),
    }
    write_json_atomic(folder / MANIFEST_NAME, data, indent=1)


def file_entry(path: str, size: int, sha256: str, oid: str, lfs: bool, commit: str) -> dict[str, Any]:
    """One file of the manifest."""
    return {"path": path, "size": size, "sha256": sha256, "oid": oid, "lfs": lfs, "commit": commit}


def hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob id) of a file's content, in one pass."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that stands in the git tree for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def lfs_oid(sha256: str, size: int) -> str:
    """The git blob id of an LFS file: that of its pointer."""
    return git_blob_id(lfs_pointer(sha256, size))
