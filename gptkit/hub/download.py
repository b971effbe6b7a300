"""Downloads from the Hugging Face Hub or any mirror of it, resumable and verified.

Every request goes through huggingface_hub (HfApi for the repo info and file listing,
get_hf_file_metadata + http_get for each file) with the endpoint passed explicitly, so it does not
matter when or whether huggingface_hub read HF_ENDPOINT. `configure_endpoint` also points the rest
of the process (datasets, HfFileSystem) at the same endpoint.

Layout of a download folder (default: gptkit.paths.data_dir(NAME), NAME the preset or repo id):

    DIR/<repo paths>                 the files, exactly as in the repo (e.g. sample/10BT/000_00000.parquet)
    DIR/.gptkit-download.json        manifest (gptkit.hub.manifest): repo, type, revision, commit, endpoint,
                                     and per file its size, sha256, git oid; `complete` once all selected files are in
    DIR/.gptkit/partial/...          bytes of unfinished files, resumed by the next run
    DIR/.gptkit/lock                 held while a download writes to DIR

Each file is fetched into .gptkit/partial, checked (size, then sha256 for LFS files or the git blob
id for the others) and only then renamed into place: a killed run leaves complete files complete.

The module is quiet: it reports through two callbacks, `progress` (a Progress per step of a file)
and `log` (one-line notes: retries, Xet switched off). gptkit/cli/download.py draws them.
"""

from __future__ import annotations

import functools
import glob
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.fsutil import disk_errors
from gptkit.hub import errors as hub_errors
from gptkit.hub import plan
from gptkit.hub.endpoint import configure_endpoint, redact_url, resolve_endpoint
from gptkit.hub.manifest import file_entry, hash_file, write_manifest
from gptkit.hub.plan import (
    DownloadResult,
    RemoteFile,
    human,
    list_files,
    matches,
    previous_download,
    split_complete,
)
from gptkit.hub.presets import Target, resolve_target

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


class _Corrupt(Exception):
    """A transfer that completed with the wrong size or hash: retried from scratch."""


def _retryable() -> tuple[type[BaseException], ...]:
    return (_Corrupt, *hub_errors.user_errors())


class _Context:
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


def _retry(fn: Callable[[], T], what: str, log: Log, attempts: int, backoff: float, connect_attempts: int = 0) -> T:
    """Call fn, retrying transient errors with exponential backoff."""
    i = 0
    while True:
        try:
            return fn()
        except _retryable() as e:
            reason = str(e) if isinstance(e, _Corrupt) else hub_errors.transient(e)
            limit = connect_attempts if connect_attempts and hub_errors.is_connect_error(e) else attempts
            i += 1
            if reason is None or i >= limit:
                raise
            wait = min(MAX_WAIT, backoff * 2 ** (i - 1))
            log(f"{what}: {reason}; retry {i}/{limit - 1} in {wait:.1f}s")
            time.sleep(wait)


def _fetch_one(ctx: _Context, rf: RemoteFile) -> None:
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
        with open(part, "r+b" if part.exists() else "wb") as f, disk_errors(ctx.dest, ctx.remaining, "download"):
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
        raise _Corrupt(f"{rf.path}: received data does not match the repo's {'sha256' if rf.lfs else 'git oid'}")
    dest = ctx.dest / rf.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    ctx.record(rf, sha256)
    with ctx.lock:
        ctx.fetch_bytes += rf.size
    ctx.moved(rf, rf.size, finished=True)


def _lock_dir(dest: Path) -> IO[str]:
    """Hold DIR/.gptkit/lock so two downloads never write the same folder (POSIX; elsewhere a no-op)."""
    (dest / STATE_DIR).mkdir(parents=True, exist_ok=True)
    fh = open(dest / STATE_DIR / "lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return fh
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise GptkitError(f"another gptkit download is writing to {dest}; wait for it or use --local-dir") from None
    return fh


def download(
    name_or_repo: str,
    *,
    endpoint: str | None = None,
    mirror: bool = False,
    subset: str | None = None,
    shards: int | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    repo_type: str | None = None,
    dry_run: bool = False,
    workers: int = 4,
    retries: int = 6,
    backoff: float = 0.5,
    progress: ProgressFn | None = None,
    log: Log | None = None,
) -> DownloadResult:
    """Download a preset or repo (see the module docstring for the folder layout). Raises GptkitError."""
    say: Log = log or (lambda msg: None)
    target = resolve_target(name_or_repo, repo_type, subset)
    url = resolve_endpoint(endpoint, mirror)
    xet_off = configure_endpoint(url)
    if xet_off:
        say(f"endpoint {redact_url(url)}: Xet transfers off (they would bypass the mirror)")

    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN") or None
    repo = f"{target.repo_type} {target.repo_id}"
    requested = revision or "main"  # until _resolve has chosen where the files are
    api = HfApi(endpoint=url, token=token, library_name="gptkit")
    ctx: _Context | None = None
    try:
        requested, commit, selection = _resolve(
            api, target, url, revision, include, exclude, shards, say, retries, backoff
        )
        dest = Path(local_dir).expanduser() if local_dir else paths.data_dir(target.name)
        old = previous_download(dest, target)
        ctx = _Context(target, url, requested, commit, dest, token)
        ctx.selection = selection
        known = {e["path"]: e for e in (old or {}).get("files", []) if isinstance(e, dict) and "path" in e}
        todo, complete = split_complete(selection, dest, known)
        for rf, sha256 in complete:
            ctx.record(rf, sha256)
        partial_bytes = sum(_partial_size(ctx, rf) for rf in todo)
        need = sum(rf.size for rf in todo) - partial_bytes
        free = plan.free_bytes(dest)
        result = DownloadResult(
            target.name,
            target.repo_id,
            target.repo_type,
            requested,
            commit,
            redact_url(url),
            dest,
            selection,
            [rf.path for rf in todo],
            [rf.path for rf, _ in complete],
            sum(rf.size for rf in selection),
            need,
            free,
            dry_run,
            xet_off,
        )
        if need > free:
            raise GptkitError(f"not enough free disk space in {dest}: need {human(need)}, {human(free)} free")
        if dry_run:
            return result
        if (
            not todo
            and old is not None
            and old.get("complete")
            and set(old.get("selection", [])) >= {rf.path for rf in selection}
        ):
            return result  # nothing to do, and the manifest already says so
        dest.mkdir(parents=True, exist_ok=True)
        lock = _lock_dir(dest)
        try:
            for path, e in known.items():  # keep files from earlier runs in the manifest
                if path not in ctx.entries and (dest / path).is_file():
                    ctx.entries[path] = e
            ctx.write_manifest(False)
            ctx.on_progress = progress
            _run_workers(ctx, todo, workers, retries, backoff, say)
            ctx.write_manifest(True)
        finally:
            lock.close()
        result.fetch_bytes = ctx.fetch_bytes
        return result
    except _Multi as e:
        first = _explain(e.first, ctx, url, repo, requested)
        raise _scrub(GptkitError(f"{e.n} of {e.total} files failed; first {e.path}: {first}"), token) from None
    except _retryable() as e:  # a network, endpoint or disk error: one line; files on disk stay as they are
        raise _scrub(_explain(e, ctx, url, repo, requested), token) from None


def _resolve(
    api: Any,
    target: Target,
    url: str,
    revision: str | None,
    include: list[str] | None,
    exclude: list[str] | None,
    shards: int | None,
    say: Log,
    retries: int,
    backoff: float,
) -> tuple[str, str, list[RemoteFile]]:
    """(revision, commit, selection): the first of the target's sources with a matching file.

    A preset lists where what it wants may be (gptkit.hub.presets: main, then e.g. refs/convert/parquet);
    --include, or a repo id, means exactly those files at --revision (default main). An explicit
    --revision replaces each source's revision, keeping the order of their globs.
    """
    from huggingface_hub.errors import RevisionNotFoundError

    if shards is not None and shards < 1:
        raise GptkitError(f"--shards must be at least 1, got {shards}")
    if include or not target.sources:
        candidates = [(revision or "main", target.files)]
    else:
        candidates = list(dict.fromkeys((revision or rev, globs) for rev, globs in target.sources))
    looked = []
    for rev, globs in candidates:
        where = f"{', '.join(globs or ('any file',))} on {rev}"
        ask = functools.partial(
            api.repo_info, target.repo_id, repo_type=target.repo_type, revision=rev, timeout=METADATA_TIMEOUT
        )
        try:
            info = _retry(ask, f"{target.repo_id}: repo info", say, retries, backoff, CONNECT_ATTEMPTS)
        except RevisionNotFoundError:
            if len(candidates) == 1:
                raise
            looked.append(f"{where} (no such revision)")
            continue
        commit = info.sha
        if not commit:
            raise GptkitError(
                f"{redact_url(url)} gave no commit for {target.repo_type} {target.repo_id}; "
                "is it a Hugging Face Hub endpoint?"
            )
        listing = functools.partial(list_files, api, target, commit)
        remote = _retry(listing, f"{target.repo_id}: file list", say, retries, backoff)
        found = plan.matching(remote, globs, exclude)
        if len(candidates) > 1 and not found:
            looked.append(where)
            continue
        selection = plan.select(remote, replace(target, files=globs), include, exclude, shards)
        if len(candidates) > 1:
            names = ", ".join(f.path for f in found[:3]) + (", ..." if len(found) > 3 else "")
            say(f"{target.repo_id}: {target.wants} from {rev} ({names})")
        return rev, commit, selection
    raise GptkitError(f"{target.repo_id} has no {target.wants}: looked for {' and '.join(looked)}")


def _explain(e: BaseException, ctx: _Context | None, endpoint: str, repo: str, revision: str) -> GptkitError:
    after = "; re-run the same command to resume" if ctx is not None and ctx.started else ""
    if isinstance(e, _Corrupt):
        return GptkitError(f"{e}{after}")
    return hub_errors.explain(e, repo, endpoint, revision, after)


def _scrub(err: GptkitError, token: str | None) -> GptkitError:
    """Never let a token reach the terminal, whatever a server or library put in a message."""
    msg = str(err).replace("\n", " ")
    return GptkitError(msg.replace(token, "***") if token else msg)


def _partial_size(ctx: _Context, rf: RemoteFile) -> int:
    p = ctx.partial(rf)
    try:
        return min(p.stat().st_size, rf.size)
    except OSError:
        return 0


def _run_workers(ctx: _Context, todo: list[RemoteFile], workers: int, retries: int, backoff: float, log: Log) -> None:
    """Fetch `todo` with a few daemon threads (so Ctrl-C ends the process at once; partial files stay)."""
    if not todo:
        return
    ctx.total = sum(rf.size for rf in todo)
    ctx.done = sum(_partial_size(ctx, rf) for rf in todo)
    ctx.file_done = {rf.path: _partial_size(ctx, rf) for rf in todo}
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
                _retry(functools.partial(_fetch_one, ctx, rf), rf.path, log, retries, backoff)
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
    bugs = [e for _, e in errors if not isinstance(e, _retryable())]
    if bugs:
        raise bugs[0]
    rf, e = errors[0]
    raise e if len(errors) == 1 else _Multi(rf, e, len(errors), len(todo))


class _Multi(Exception):
    def __init__(self, rf: RemoteFile, e: BaseException, n: int, total: int):
        super().__init__(f"{n} of {total} files failed, first {rf.path}: {hub_errors.reason(e)}")
        self.first, self.n, self.total, self.path = e, n, total, rf.path
