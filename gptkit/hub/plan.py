"""What a download fetches: the repo's files at a commit, the selection, what is already on disk, and
whether the rest fits (a dry run stops here, with the DownloadResult of the plan)."""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError
from gptkit.hub.manifest import MANIFEST_NAME, hash_file, read_manifest
from gptkit.hub.presets import Target


@dataclass
class RemoteFile:
    path: str
    size: int
    oid: str  # git blob id (for LFS files: of the pointer)
    sha256: str | None  # LFS files only: the content's sha256
    xet_hash: str | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class DownloadResult:
    name: str
    repo_id: str
    repo_type: str
    revision: str
    commit: str
    endpoint: str
    local_dir: Path
    files: list[RemoteFile]  # the selection
    fetched: list[str] = field(default_factory=list)  # downloaded by this run (or, dry run: to download)
    skipped: list[str] = field(default_factory=list)  # already complete
    total_bytes: int = 0
    fetch_bytes: int = 0  # bytes transferred (dry run: still to transfer)
    free_bytes: int = 0
    dry_run: bool = False
    xet_disabled: bool = False

    @property
    def manifest(self) -> Path:
        return self.local_dir / MANIFEST_NAME


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def list_files(api: Any, target: Target, commit: str) -> list[RemoteFile]:
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(target.repo_id, repo_type=target.repo_type, revision=commit, recursive=True)
    return [
        RemoteFile(f.path, f.size, f.blob_id, f.lfs.sha256 if f.lfs else None, getattr(f, "xet_hash", None))
        for f in tree
        if isinstance(f, RepoFile)
    ]


def _match(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def matching(files: list[RemoteFile], patterns: tuple[str, ...] | None, exclude: list[str] | None) -> list[RemoteFile]:
    """The files matching any of the globs (None: every file) and none of `exclude`, sorted by path."""
    skip = list(exclude or [])
    return sorted(
        (f for f in files if (patterns is None or _match(f.path, patterns)) and not _match(f.path, skip)),
        key=lambda f: f.path,
    )


def select(
    files: list[RemoteFile],
    target: Target,
    include: list[str] | None,
    exclude: list[str] | None,
    shards: int | None,
) -> list[RemoteFile]:
    match = _match
    skip = list(exclude or [])
    patterns = tuple(include) if include else target.files
    data = matching(files, patterns, skip)
    if shards is not None:
        if shards < 1:
            raise GptkitError(f"--shards must be at least 1, got {shards}")
        data = data[:shards]
    if not data:
        what = ", ".join(patterns) if patterns else "any file"
        raise GptkitError(f"no file in {target.repo_id} matches {what}" + (f" minus {', '.join(skip)}" if skip else ""))
    chosen = {f.path for f in data}
    if not include:
        data += [f for f in files if f.path not in chosen and match(f.path, target.extra) and not match(f.path, skip)]
    return sorted(data, key=lambda f: f.path)


def is_complete(path: Path, rf: RemoteFile, entry: dict[str, Any] | None) -> bool:
    """Is the file on disk this exact version? Trusts the manifest; hashes only unrecorded files."""
    try:
        if not path.is_file() or path.stat().st_size != rf.size:
            return False
    except OSError:
        return False
    if entry and entry.get("size") == rf.size:
        if rf.lfs and entry.get("sha256") == rf.sha256:
            return True
        if not rf.lfs and entry.get("oid") == rf.oid:
            return True
    sha256, git_oid = hash_file(path)
    return matches(rf, sha256, git_oid)


def matches(rf: RemoteFile, sha256: str, git_oid: str) -> bool:
    return sha256 == rf.sha256 if rf.lfs else git_oid == rf.oid


def previous_download(dest: Path, target: Target) -> dict[str, Any] | None:
    """The manifest of an earlier download of this repo into `dest`; refuses a folder that holds another."""
    if dest.exists() and not dest.is_dir():
        raise GptkitError(f"{dest} exists and is not a folder; choose another --local-dir")
    old = read_manifest(dest) if dest.is_dir() else None
    if old is not None and (old.get("repo_id"), old.get("repo_type")) != (target.repo_id, target.repo_type):
        raise GptkitError(
            f"{dest} holds {old.get('repo_type')} {old.get('repo_id')} from an earlier download; choose another --local-dir"
        )
    return old


def split_complete(
    selection: list[RemoteFile], dest: Path, known: dict[str, dict[str, Any]]
) -> tuple[list[RemoteFile], list[tuple[RemoteFile, str]]]:
    """(files to fetch, [(file, sha256)] of those already complete in `dest`); `known`: manifest entries by path."""
    todo, complete = [], []
    for rf in selection:
        e = known.get(rf.path)
        if is_complete(dest / rf.path, rf, e):
            complete.append((rf, e["sha256"] if e and e.get("sha256") else hash_file(dest / rf.path)[0]))
        else:
            todo.append(rf)
    return todo, complete
