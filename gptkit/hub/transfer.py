"""Transferring a download's files: each one fetched into a partial file, resumed, verified (size,
then sha256 or git blob id) and renamed into place, by a few threads with retries and backoff. The
shared state (repo, endpoint, folder, manifest, byte counts) is a Transfer; progress goes to a
callback as Progress events. gptkit.hub.download decides what to fetch and calls run_workers.
"""

from __future__ import annotations

import functools
import glob
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gptkit.fsutil import disk_errors
from gptkit.hub import errors as hub_errors
from gptkit.hub.endpoint import redact_url
from gptkit.hub.manifest import file_entry, hash_file, write_manifest
from gptkit.hub.plan import RemoteFile, matches
from gptkit.hub.presets import Target

STATE_DIR = ".gptkit"
METADATA_TIMEOUT = 10.0  # seconds, for the repo info and each file's HEAD
CONNECT_ATTEMPTS = 3  # an endpoint unreachable from the start fails within a few seconds
MAX_WAIT = 8.0


T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Progress:
    """One step of a download, for a progress display: a file started, moved on, or finished."""

    file: str  # repo path
    file_done: int  # its bytes on disk
    file_size: int
    done: int  # bytes on disk of every file this run fetches (partial files of earlier runs included)
    total: int
    finished: bool = False  # the file is verified and in place


ProgressFn = Callable[[Progress], None]


class Corrupt(Exception):
    """A transfer that completed with the wrong size or hash: retried from scratch."""


def retryable() -> tuple[type[BaseException], ...]:
    return (Corrupt, *hub_errors.user_errors())


class Transfer:
    """What every worker shares: the repo, the endpoint, the folder, the manifest and the byte counts."""

    def __init__(self, target: Target, endpoint: str, revision: str, commit: str, dest: Path, token: str | None):
        self.target, self.endpoint, self.revision, self.commit = target, endpoint, revision, commit
        self.dest, self.token = dest, token
        self.lock = threading.Lock()
        self.started = False  # some bytes were requested: a re-run resumes
        self.entries: dict[str, dict[str, Any]] = {}
        self.selection: list[RemoteFile] = []
        self.fetch_bytes = 0
        self.on_progress: ProgressFn | None = None
        self.file_done: dict[str, int] = {}
        self.done = self.total = 0

    def partial(self, rf: RemoteFile) -> Path:
        tag = (rf.sha256 or rf.oid)[:16]
        return self.dest / STATE_DIR / "partial" / f"{rf.path}.{tag}.part"

    def record(self, rf: RemoteFile, sha256: str) -> None:
        with self.lock:
            self.entries[rf.path] = file_entry(rf.path, rf.size, sha256, rf.oid, rf.lfs, self.commit)

    def write_manifest(self, complete: bool) -> None:
        header = {
            "name": self.target.name,
            "repo_id": self.target.repo_id,
            "repo_type": self.target.repo_type,
            "revision": self.revision,
            "commit": self.commit,
            "endpoint": redact_url(self.endpoint),
            "subset": self.target.subset,
            "selection": sorted(rf.path for rf in self.selection),
        }
        with self.lock:
            write_manifest(self.dest, header, list(self.entries.values()), complete)

    def remaining(self) -> int:
        """Bytes still to fetch."""
        return max(0, self.total - self.done)

    def remaining_on_disk(self, rf: RemoteFile, part: Path) -> int:
        """Bytes still to fetch after a write of `rf` failed: huggingface_hub counts each chunk
        before writing it, so its bytes are re-counted from the partial file."""
        self.moved(rf, part.stat().st_size if part.exists() else 0)
        return self.remaining()

    def moved(self, rf: RemoteFile, on_disk: int, finished: bool = False) -> None:
        """Account for `rf` now having `on_disk` bytes, and tell the progress callback."""
        with self.lock:
            self.done += on_disk - self.file_done.get(rf.path, 0)
            self.file_done[rf.path] = on_disk
            event = Progress(rf.path, on_disk, rf.size, self.done, self.total, finished)
        if self.on_progress is not None:
            self.on_progress(event)

    def bar_class(self, rf: RemoteFile) -> type:
        """A tqdm class for huggingface_hub's tqdm_class hook: it draws nothing, and reports bytes to `moved`."""
        from tqdm import tqdm

        ctx = self

        class _Bar(tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; plain tqdm refuses it
                kwargs["disable"] = True
                self._on_disk = int(kwargs.get("initial") or 0)
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                self._on_disk += int(n or 0)
                ctx.moved(rf, self._on_disk)
                return super().update(n)

        return _Bar


def retry(fn: Callable[[], T], what: str, log: Log, attempts: int, backoff: float, connect_attempts: int = 0) -> T:
    """Call fn, retrying transient errors with exponential backoff."""
    i = 0
    while True:
        try:
            return fn()
        except retryable() as e:
            reason = str(e) if isinstance(e, Corrupt) else hub_errors.transient(e)
            limit = connect_attempts if connect_attempts and hub_errors.is_connect_error(e) else attempts
            i += 1
            if reason is None or i >= limit:
                raise
            wait = min(MAX_WAIT, backoff * 2 ** (i - 1))
            log(f"{what}: {reason}; retry {i}/{limit - 1} in {wait:.1f}s")
            time.sleep(wait)


def fetch_one(ctx: Transfer, rf: RemoteFile) -> None:
    """Transfer one file into its partial file, verify it, rename it into place."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, xet_get
    from huggingface_hub.utils import build_hf_headers
    from huggingface_hub.utils._runtime import is_xet_available

    t = ctx.target
    url = hf_hub_url(t.repo_id, rf.path, repo_type=t.repo_type, revision=ctx.commit, endpoint=ctx.endpoint)
    meta = get_hf_file_metadata(url, token=ctx.token, timeout=METADATA_TIMEOUT, endpoint=ctx.endpoint)
    headers = build_hf_headers(token=ctx.token, library_name="gptkit")
    location = meta.location or url
    if urlsplit(location).netloc != urlsplit(ctx.endpoint).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
    part = ctx.partial(rf)
    part.parent.mkdir(parents=True, exist_ok=True)
    for stale in part.parent.glob(f"{glob.escape(Path(rf.path).name)}.*.part"):
        if stale != part:  # left by a run at another revision of this file
            stale.unlink(missing_ok=True)
    with ctx.lock:
        ctx.started = True
    bar = ctx.bar_class(rf)
    if meta.xet_file_data is not None and is_xet_available():
        # Only on huggingface.co (configure_endpoint switches Xet off elsewhere). Xet keeps its own
        # chunk cache, so an interrupted file costs little to restart.
        ctx.moved(rf, 0)
        xet_get(
            incomplete_path=part,
            xet_file_data=meta.xet_file_data,
            headers=headers,
            expected_size=rf.size,
            displayed_filename=rf.path,
            tqdm_class=bar,
        )
    else:
        have = part.stat().st_size if part.exists() else 0
        if have > rf.size:
            have = 0
        ctx.moved(rf, have)
        # A full disk: one line with what is left to fetch; the partial file stays for the re-run to resume.
        need = functools.partial(ctx.remaining_on_disk, rf, part)
        with open(part, "r+b" if part.exists() else "wb") as f, disk_errors(ctx.dest, need, "download"):
            f.truncate(have)
            f.seek(have)
            http_get(
                location,
                f,
                resume_size=have,
                headers=headers,
                expected_size=rf.size,
                displayed_filename=rf.path,
                tqdm_class=bar,
            )
    size = part.stat().st_size
    sha256, git_oid = hash_file(part)
    if size != rf.size or not matches(rf, sha256, git_oid):
        part.unlink(missing_ok=True)
        ctx.moved(rf, 0)
        raise Corrupt(f"{rf.path}: received data does not match the repo's {'sha256' if rf.lfs else 'git oid'}")
    dest = ctx.dest / rf.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    ctx.record(rf, sha256)
    with ctx.lock:
        ctx.fetch_bytes += rf.size
    ctx.moved(rf, rf.size, finished=True)


def partial_size(ctx: Transfer, rf: RemoteFile) -> int:
    p = ctx.partial(rf)
    try:
        return min(p.stat().st_size, rf.size)
    except OSError:
        return 0


def run_workers(ctx: Transfer, todo: list[RemoteFile], workers: int, retries: int, backoff: float, log: Log) -> None:
    """Fetch `todo` with a few daemon threads (so Ctrl-C ends the process at once; partial files stay)."""
    if not todo:
        return
    ctx.total = sum(rf.size for rf in todo)
    ctx.done = sum(partial_size(ctx, rf) for rf in todo)
    ctx.file_done = {rf.path: partial_size(ctx, rf) for rf in todo}
    jobs: queue.Queue[RemoteFile] = queue.Queue()
    for rf in todo:
        jobs.put(rf)
    errors: list[tuple[RemoteFile, Exception]] = []

    def work() -> None:
        while True:
            try:
                rf = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                retry(functools.partial(fetch_one, ctx, rf), rf.path, log, retries, backoff)
                ctx.write_manifest(False)
            except Exception as e:  # noqa: BLE001 - handed to the main thread below, which re-raises bugs as they are
                errors.append((rf, e))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(workers, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if not errors:
        return
    bugs = [e for _, e in errors if not isinstance(e, retryable())]
    if bugs:
        raise bugs[0]
    rf, e = errors[0]
    raise e if len(errors) == 1 else MultiError(rf, e, len(errors), len(todo))


class MultiError(Exception):
    def __init__(self, rf: RemoteFile, e: BaseException, n: int, total: int):
        super().__init__(f"{n} of {total} files failed, first {rf.path}: {hub_errors.reason(e)}")
        self.first, self.n, self.total, self.path = e, n, total, rf.path
