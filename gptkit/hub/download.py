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
    DIR/.gptkit/.lock                held while a download writes to DIR (gptkit.lock: host + PID)

Each file is fetched into .gptkit/partial, checked (size, then sha256 for LFS files or the git blob
id for the others) and only then renamed into place: a killed run leaves complete files complete
(gptkit.hub.transfer does the fetching; this module decides what to fetch and reports the result).

The module is quiet: it reports through two callbacks, `progress` (a Progress per step of a file)
and `log` (one-line notes: retries, Xet switched off). gptkit/cli/download.py draws them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from gptkit import paths
from gptkit.errors import DiskError, GptkitError
from gptkit.fsutil import make_dirs
from gptkit.hub import errors as hub_errors
from gptkit.hub import plan
from gptkit.hub.endpoint import configure_endpoint, redact_url, resolve_endpoint
from gptkit.hub.plan import (
    DownloadResult,
    RemoteFile,
    human,
    list_files,
    previous_download,
    split_complete,
)
from gptkit.hub.presets import Target, resolve_target
from gptkit.hub.transfer import (
    CONNECT_ATTEMPTS,
    METADATA_TIMEOUT,
    STATE_DIR,
    Corrupt,
    Log,
    MultiError,
    ProgressFn,
    Transfer,
    partial_size,
    retry,
    retryable,
    run_workers,
)
from gptkit.lock import LOCK_FILE, Lock, LockHeld, acquire


def _lock_dir(dest: Path) -> Lock:
    """Hold DIR/.gptkit/.lock while writing to DIR, so two downloads never write the same folder.

    gptkit.lock's lock file (host + PID), as for runs and shards, not flock: network filesystems do not
    honour flock reliably. A lock left by a killed download on this host is taken over."""
    lockfile = dest / STATE_DIR / LOCK_FILE
    try:
        return acquire(lockfile, subject=str(dest), what="gptkit download", how_to_break=f"delete {lockfile}")
    except LockHeld as e:
        raise LockHeld(f"{e}; wait for it, or use --local-dir") from None


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
    ctx: Transfer | None = None
    try:
        requested, commit, selection = _resolve(
            api, target, url, revision, include, exclude, shards, say, retries, backoff
        )
        dest = Path(local_dir).expanduser() if local_dir else paths.data_dir(target.name)
        old = previous_download(dest, target)
        ctx = Transfer(target, url, requested, commit, dest, token)
        ctx.selection = selection
        known = {e["path"]: e for e in (old or {}).get("files", []) if isinstance(e, dict) and "path" in e}
        todo, complete = split_complete(selection, dest, known)
        for rf, sha256 in complete:
            ctx.record(rf, sha256)
        partial_bytes = sum(partial_size(ctx, rf) for rf in todo)
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
        make_dirs(dest)
        with _lock_dir(dest):
            for path, e in known.items():  # keep files from earlier runs in the manifest
                if path not in ctx.entries and (dest / path).is_file():
                    ctx.entries[path] = e
            ctx.write_manifest(False)
            ctx.on_progress = progress
            run_workers(ctx, todo, workers, retries, backoff, say)
            ctx.write_manifest(True)
            _prune_empty(dest / STATE_DIR / "partial")
        result.fetch_bytes = ctx.fetch_bytes
        return result
    except MultiError as e:
        first = _explain(e.first, ctx, url, repo, requested)
        raise _scrub(GptkitError(f"{e.n} of {e.total} files failed; first {e.path}: {first}"), token) from None
    except DiskError as e:  # a disk that filled up during the transfer: the partial files stay
        if ctx is not None and ctx.started:
            raise DiskError(f"{e}; free some space, then re-run the same command to resume") from None
        raise
    except retryable() as e:  # a network, endpoint or disk error: one line; files on disk stay as they are
        raise _scrub(_explain(e, ctx, url, repo, requested), token) from None


def _prune_empty(top: Path) -> None:
    """Remove the folders a finished download's partial files left empty (DIR/.gptkit/partial/data/...);
    a folder still holding a file (another download's, in progress) stays."""
    if not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            d.rmdir()
        except OSError:
            pass  # not empty


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
            info = retry(ask, f"{target.repo_id}: repo info", say, retries, backoff, CONNECT_ATTEMPTS)
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
        remote = retry(listing, f"{target.repo_id}: file list", say, retries, backoff)
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


def _explain(e: BaseException, ctx: Transfer | None, endpoint: str, repo: str, revision: str) -> GptkitError:
    after = "; re-run the same command to resume" if ctx is not None and ctx.started else ""
    if isinstance(e, Corrupt):
        return GptkitError(f"{e}{after}")
    return hub_errors.explain(e, repo, endpoint, revision, after)


def _scrub(err: GptkitError, token: str | None) -> GptkitError:
    """Never let a token reach the terminal, whatever a server or library put in a message."""
    msg = str(err).replace("\n", " ")
    return GptkitError(msg.replace(token, "***") if token else msg)
