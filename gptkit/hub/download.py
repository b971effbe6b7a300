"""Downloads from the Hugging Face Hub or any mirror of it, resumable and verified.

Every request goes through huggingface_hub (HfApi for the repo info and file listing,
get_hf_file_metadata + http_get for each file) with the endpoint passed explicitly, so it does not
matter when or whether huggingface_hub read HF_ENDPOINT. `configure_endpoint` also points the rest
of the process (datasets, HfFileSystem) at the same endpoint.

Layout of a download folder (default: gptkit.paths.data_dir(NAME), NAME the preset or repo id):

    DIR/<repo paths>                 the files, exactly as in the repo (e.g. sample/10BT/000_00000.parquet)
    DIR/.gptkit-download.json        manifest: repo, type, revision, commit, endpoint, and per file
                                     its size, sha256, git oid; `complete` once all selected files are in
    DIR/.gptkit/partial/...          bytes of unfinished files, resumed by the next run
    DIR/.gptkit/lock                 held while a download writes to DIR

Each file is fetched into .gptkit/partial, checked (size, then sha256 for LFS files or the git blob
id for the others) and only then renamed into place: a killed run leaves complete files complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import glob
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gptkit import paths
from gptkit.errors import GptkitError
from gptkit.fsutil import write_json_atomic
from gptkit.hub.endpoint import is_official, resolve_endpoint

MANIFEST_NAME = ".gptkit-download.json"
STATE_DIR = ".gptkit"
REPO_TYPES = ("model", "dataset")
METADATA_TIMEOUT = 10.0  # seconds, for the repo info and each file's HEAD
CONNECT_ATTEMPTS = 3  # an endpoint unreachable from the start fails within a few seconds
MAX_WAIT = 8.0


# --- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    name: str
    repo_id: str
    repo_type: str
    files: tuple[str, ...]  # the data: globs, subject to --shards
    extra: tuple[str, ...] = ()  # small files that go with the data (e.g. README.md with the dataset configs)
    subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()  # --subset NAME -> globs replacing `files`
    size: str = ""  # approximate, for --list; --dry-run shows the exact figure
    about: str = ""


_GPT2_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
)


def _fineweb_subsets() -> tuple:
    return tuple((f"sample-{n}", (f"sample/{n}/*.parquet",)) for n in ("10BT", "100BT", "350BT"))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fineweb-edu",
            "HuggingFaceFW/fineweb-edu",
            "dataset",
            ("sample/10BT/*.parquet",),
            ("README.md",),
            _fineweb_subsets(),
            "≈27 GB (sample-10BT, 14 files); sample-100BT ≈270 GB, sample-350BT ≈1 TB",
            "FineWeb-Edu, educational web text (parquet, column `text`)",
        ),
        Preset(
            "fineweb",
            "HuggingFaceFW/fineweb",
            "dataset",
            ("sample/10BT/*.parquet",),
            ("README.md",),
            _fineweb_subsets(),
            "≈30 GB (sample-10BT); sample-100BT ≈300 GB, sample-350BT ≈1 TB",
            "FineWeb, filtered Common Crawl (parquet, column `text`)",
        ),
        Preset(
            # The author's repo; its main branch holds the splits as parquet under data/.
            "hellaswag",
            "Rowan/hellaswag",
            "dataset",
            ("data/validation-*.parquet",),
            ("README.md",),
            size="≈11 MB",
            about="HellaSwag validation set, 10,042 examples (ctx, endings, label as a string)",
        ),
        Preset(
            "gpt2",
            "openai-community/gpt2",
            "model",
            _GPT2_FILES,
            size="≈0.55 GB",
            about="GPT-2 124M weights + tokenizer",
        ),
        Preset("gpt2-medium", "openai-community/gpt2-medium", "model", _GPT2_FILES, size="≈1.5 GB", about="GPT-2 350M"),
        Preset("gpt2-large", "openai-community/gpt2-large", "model", _GPT2_FILES, size="≈3.3 GB", about="GPT-2 774M"),
        Preset("gpt2-xl", "openai-community/gpt2-xl", "model", _GPT2_FILES, size="≈6.5 GB", about="GPT-2 1.5B"),
    )
}


@dataclass
class Target:
    name: str  # names the default folder: the preset, or the repo id
    repo_id: str
    repo_type: str
    files: tuple[str, ...] | None  # None: the whole repo
    extra: tuple[str, ...]
    subset: str | None = None


def resolve_target(name_or_repo: str, repo_type: str | None = None, subset: str | None = None) -> Target:
    if repo_type is not None and repo_type not in REPO_TYPES:
        raise GptkitError(f"invalid --repo-type {repo_type!r}; choose model or dataset")
    preset = PRESETS.get(name_or_repo)
    if preset is not None:
        if repo_type is not None and repo_type != preset.repo_type:
            raise GptkitError(f"preset {preset.name} is a {preset.repo_type} repo ({preset.repo_id}); drop --repo-type")
        files = preset.files
        if subset is not None:
            subsets = dict(preset.subsets)
            if not subsets:
                raise GptkitError(f"preset {preset.name} has no subsets; --subset applies to fineweb and fineweb-edu")
            key = subset if subset.startswith("sample-") else f"sample-{subset}"
            if key not in subsets:
                raise GptkitError(f"unknown subset {subset!r} for {preset.name}; choose one of: {', '.join(subsets)}")
            files, subset = subsets[key], key
        return Target(preset.name, preset.repo_id, preset.repo_type, files, preset.extra, subset)
    if subset is not None:
        raise GptkitError("--subset applies to the fineweb and fineweb-edu presets only; use --include for other repos")
    parts = name_or_repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise GptkitError(
            f"unknown preset {name_or_repo!r}; choose one of {', '.join(PRESETS)} or give a repo as org/name"
        )
    return Target(name_or_repo, name_or_repo, repo_type or "model", None, ())


def list_presets() -> list[Preset]:
    return list(PRESETS.values())


# --- endpoint -----------------------------------------------------------------------------------


def configure_endpoint(endpoint: str) -> bool:
    """Point huggingface_hub and datasets in this process (and child processes) at `endpoint`.

    Both libraries read HF_ENDPOINT once, at import; this sets the variable and patches the values
    they already read, whichever was imported first. Off huggingface.co, Xet is switched off: Xet
    clients fetch from Hugging Face's own storage and would bypass the mirror. Returns True if Xet
    was switched off.
    """
    import huggingface_hub.constants as hc

    os.environ["HF_ENDPOINT"] = endpoint
    hc.ENDPOINT = endpoint
    hc.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    host = urlsplit(endpoint).hostname
    if host:
        hc.HF_URL_HOSTS = frozenset(hc.HF_URL_HOSTS | {host.lower()})
    xet_off = not is_official(endpoint)
    if xet_off:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        hc.HF_HUB_DISABLE_XET = True  # read at call time by huggingface_hub (is_xet_available)
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_ENDPOINT = endpoint
        ds_config.HUB_DATASETS_URL = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    hffs = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs is not None:
        hffs.HfFileSystem.clear_instance_cache()  # cached instances keep the endpoint they were made with
    return xet_off


@contextlib.contextmanager
def preserved_endpoint_state():
    """Undo, on exit, what configure_endpoint changes process-wide: the environment, huggingface_hub's
    constants and datasets' (tests use this so one test's mirror never leaks into the next)."""
    import huggingface_hub.constants as hc

    env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    saved = {
        k: getattr(hc, k) for k in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_URL_HOSTS", "HF_HUB_DISABLE_XET")
    }
    ds_config = sys.modules.get("datasets.config")
    ds_saved = (ds_config.HF_ENDPOINT, ds_config.HUB_DATASETS_URL) if ds_config is not None else None
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k, v in saved.items():
            setattr(hc, k, v)
        ds_config = sys.modules.get("datasets.config")
        if ds_config is not None:
            if ds_saved is not None:
                ds_config.HF_ENDPOINT, ds_config.HUB_DATASETS_URL = ds_saved
            else:  # imported inside the block: it read our endpoint from the environment
                ds_config.HF_ENDPOINT = saved["ENDPOINT"]
                ds_config.HUB_DATASETS_URL = saved["ENDPOINT"] + "/datasets/{repo_id}/resolve/{revision}/{path}"
        hffs = sys.modules.get("huggingface_hub.hf_file_system")
        if hffs is not None:
            hffs.HfFileSystem.clear_instance_cache()


@contextlib.contextmanager
def use_endpoint(endpoint: str):
    """configure_endpoint for the duration of a `with` block (tests), then restore the previous state."""
    with preserved_endpoint_state():
        configure_endpoint(endpoint)
        yield endpoint


def redact_url(url: str) -> str:
    """An endpoint URL without user:password@, fit to print or store."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --- manifest -----------------------------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of a download folder, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "repo_id" in data else None


def local_files(name_or_dir: str | Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """The downloaded files of a preset / repo id / folder that are complete on disk, sorted by repo path.

    `gptkit tokenize fineweb-edu` uses this: local_files("fineweb-edu", (".parquet",)).
    """
    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = paths.data_dir(str(name_or_dir))
    m = read_manifest(folder)
    if m is None:
        return []
    out = []
    for e in sorted(m.get("files", []), key=lambda e: e["path"]):
        p = folder / e["path"]
        if (suffixes is None or p.name.endswith(suffixes)) and p.is_file() and p.stat().st_size == e.get("size"):
            out.append(p)
    return out


# --- the download -------------------------------------------------------------------------------


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


class _Corrupt(Exception):
    """A transfer that completed with the wrong size or hash: retried from scratch."""


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _transient(e: BaseException) -> str | None:
    """A short reason if `e` is worth retrying, else None."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, _Corrupt):
        return str(e)
    if isinstance(e, httpx2.TimeoutException):
        return "timed out"
    if isinstance(e, httpx2.TransportError):
        return f"connection error ({type(e).__name__})"
    if (
        isinstance(e, HfHubHTTPError)
        and e.response is not None
        and e.response.status_code in (408, 429, 500, 502, 503, 504)
    ):
        return f"HTTP {e.response.status_code}"
    if isinstance(e, OSError) and "Consistency check failed" in str(e):
        return "incomplete transfer"
    return None


def _explain(e: BaseException, ctx: _Context | None, endpoint: str, repo: str, revision: str | None) -> GptkitError:
    """The one-line message for an error that survived the retries."""
    import httpx2
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = redact_url(endpoint)
    tail = "; re-run the same command to resume" if ctx is not None and ctx.started else ""
    if isinstance(e, GatedRepoError):
        return GptkitError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, RevisionNotFoundError):
        return GptkitError(f"revision {revision!r} not found in {repo} at {where}")
    if isinstance(e, RepositoryNotFoundError):
        return GptkitError(
            f"repository {repo} not found at {where} (check the name and --repo-type; private repos need HF_TOKEN)"
        )
    if isinstance(e, DisabledRepoError):
        return GptkitError(f"{repo} is disabled on {where}")
    if isinstance(e, RemoteEntryNotFoundError):
        return GptkitError(f"a file listed by {where} for {repo} is missing there{tail}")
    if isinstance(e, HFValidationError):
        return GptkitError(f"invalid repo id or revision for {repo!r}: {str(e).splitlines()[0]}")
    if isinstance(e, httpx2.ConnectError):
        fix = (
            "behind a firewall? try --mirror"
            if is_official(endpoint)
            else "check --endpoint / HF_ENDPOINT and the network"
        )
        return GptkitError(f"cannot reach {where} ({_reason(e)}); {fix}{tail}")
    if isinstance(e, httpx2.TimeoutException):
        return GptkitError(f"{where} timed out{tail}")
    if isinstance(e, httpx2.TransportError):
        return GptkitError(f"connection to {where} failed ({_reason(e)}){tail}")
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        code = e.response.status_code
        if code in (401, 403):
            return GptkitError(f"{where} refused access to {repo} (HTTP {code}); set HF_TOKEN to a token with access")
        return GptkitError(f"{where} answered HTTP {code} for {repo}{tail}")
    if isinstance(e, _Corrupt):
        return GptkitError(f"{e}{tail}")
    if isinstance(e, ValueError) and "JSON" in type(e).__name__ + str(e):
        return GptkitError(f"{where} does not answer like a Hugging Face Hub endpoint; check --endpoint / HF_ENDPOINT")
    if isinstance(e, OSError):
        return GptkitError(f"{e.strerror or e}{' (' + e.filename + ')' if getattr(e, 'filename', None) else ''}{tail}")
    return GptkitError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{tail}")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[-1] if text else type(e).__name__
    return msg[:120]


class _Context:
    """What every worker needs: the repo, the endpoint, the folder, and the shared manifest."""

    def __init__(self, target: Target, endpoint: str, revision: str, commit: str, dest: Path, token, log, progress):
        self.target, self.endpoint, self.revision, self.commit = target, endpoint, revision, commit
        self.dest, self.token, self.log, self.progress = dest, token, log, progress
        self.lock = threading.Lock()
        self.started = False
        self.entries: dict[str, dict] = {}
        self.bar_class = None
        self.fetch_bytes = 0
        self.selection: list[RemoteFile] = []

    def partial(self, rf: RemoteFile) -> Path:
        tag = (rf.sha256 or rf.oid)[:16]
        return self.dest / STATE_DIR / "partial" / f"{rf.path}.{tag}.part"

    def record(self, rf: RemoteFile, sha256: str) -> None:
        with self.lock:
            self.entries[rf.path] = {
                "path": rf.path,
                "size": rf.size,
                "sha256": sha256,
                "oid": rf.oid,
                "lfs": rf.lfs,
                "commit": self.commit,
            }

    def write_manifest(self, complete: bool, selection: list[RemoteFile]) -> None:
        with self.lock:
            data = {
                "format": 1,
                "tool": "gptkit download",
                "name": self.target.name,
                "repo_id": self.target.repo_id,
                "repo_type": self.target.repo_type,
                "revision": self.revision,
                "commit": self.commit,
                "endpoint": redact_url(self.endpoint),
                "subset": self.target.subset,
                "selection": sorted(rf.path for rf in selection),
                "complete": complete,
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "files": [self.entries[p] for p in sorted(self.entries)],
            }
            write_json_atomic(self.dest / MANIFEST_NAME, data, indent=1)


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) in one pass."""
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _matches(rf: RemoteFile, sha256: str, git_oid: str) -> bool:
    return sha256 == rf.sha256 if rf.lfs else git_oid == rf.oid


def _retry(fn: Callable, what: str, log, attempts: int, backoff: float, connect_attempts: int | None = None):
    """Call fn, retrying transient errors with exponential backoff."""
    import httpx2

    i = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified just below
            reason = _transient(e)
            limit = connect_attempts if connect_attempts and isinstance(e, httpx2.ConnectError) else attempts
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
    if meta.xet_file_data is not None and is_xet_available():
        # Only on huggingface.co (configure_endpoint switches Xet off elsewhere). Xet keeps its own
        # chunk cache, so an interrupted file costs little to restart.
        xet_get(
            incomplete_path=part,
            xet_file_data=meta.xet_file_data,
            headers=headers,
            expected_size=rf.size,
            displayed_filename=rf.path,
            tqdm_class=ctx.bar_class,
        )
    else:
        have = part.stat().st_size if part.exists() else 0
        if have > rf.size:
            have = 0
        with open(part, "r+b" if part.exists() else "wb") as f:
            f.truncate(have)
            f.seek(have)
            http_get(
                location,
                f,
                resume_size=have,
                headers=headers,
                expected_size=rf.size,
                displayed_filename=rf.path,
                tqdm_class=ctx.bar_class,
            )
    size = part.stat().st_size
    sha256, git_oid = _hash_file(part)
    if size != rf.size or not _matches(rf, sha256, git_oid):
        part.unlink(missing_ok=True)
        raise _Corrupt(f"{rf.path}: received data does not match the repo's {'sha256' if rf.lfs else 'git oid'}")
    dest = ctx.dest / rf.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    ctx.record(rf, sha256)
    with ctx.lock:
        ctx.fetch_bytes += rf.size


def _select(files: list[RemoteFile], target: Target, include, exclude, shards) -> list[RemoteFile]:
    def match(path: str, patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)

    exclude = list(exclude or [])
    patterns = list(include) if include else target.files
    data = sorted(
        (f for f in files if (patterns is None or match(f.path, patterns)) and not match(f.path, exclude)),
        key=lambda f: f.path,
    )
    if shards is not None:
        if shards < 1:
            raise GptkitError(f"--shards must be at least 1, got {shards}")
        data = data[:shards]
    if not data:
        what = ", ".join(patterns) if patterns else "any file"
        raise GptkitError(
            f"no file in {target.repo_id} matches {what}" + (f" minus {', '.join(exclude)}" if exclude else "")
        )
    chosen = {f.path for f in data}
    if not include:
        data += [
            f for f in files if f.path not in chosen and match(f.path, target.extra) and not match(f.path, exclude)
        ]
    return sorted(data, key=lambda f: f.path)


def _lock_dir(dest: Path):
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
    progress: bool = True,
    workers: int = 4,
    retries: int = 6,
    backoff: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> DownloadResult:
    """Download a preset or repo (see module docstring for the folder layout). Raises GptkitError."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    target = resolve_target(name_or_repo, repo_type, subset)
    url = resolve_endpoint(endpoint, mirror)
    xet_off = configure_endpoint(url)
    if xet_off:
        log(f"endpoint {redact_url(url)}: Xet transfers off (they would bypass the mirror)")

    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    token = os.environ.get("HF_TOKEN") or None
    repo = f"{target.repo_type} {target.repo_id}"
    requested = revision or "main"
    api = HfApi(endpoint=url, token=token, library_name="gptkit")
    ctx: _Context | None = None
    try:
        info = _retry(
            lambda: api.repo_info(
                target.repo_id, repo_type=target.repo_type, revision=requested, timeout=METADATA_TIMEOUT
            ),
            f"{target.repo_id}: repo info",
            log,
            retries,
            backoff,
            CONNECT_ATTEMPTS,
        )
        commit = info.sha
        if not commit:
            raise GptkitError(f"{redact_url(url)} gave no commit for {repo}; is it a Hugging Face Hub endpoint?")
        tree = _retry(
            lambda: list(
                api.list_repo_tree(target.repo_id, repo_type=target.repo_type, revision=commit, recursive=True)
            ),
            f"{target.repo_id}: file list",
            log,
            retries,
            backoff,
        )
        remote = [
            RemoteFile(f.path, f.size, f.blob_id, f.lfs.sha256 if f.lfs else None, getattr(f, "xet_hash", None))
            for f in tree
            if isinstance(f, RepoFile)
        ]
        selection = _select(remote, target, include, exclude, shards)
        dest = Path(local_dir).expanduser() if local_dir else paths.data_dir(target.name)
        if dest.exists() and not dest.is_dir():
            raise GptkitError(f"{dest} exists and is not a folder; choose another --local-dir")
        old = read_manifest(dest) if dest.is_dir() else None
        if old is not None and (old.get("repo_id"), old.get("repo_type")) != (target.repo_id, target.repo_type):
            raise GptkitError(
                f"{dest} holds {old.get('repo_type')} {old.get('repo_id')} from an earlier download; choose another --local-dir"
            )
        ctx = _Context(target, url, requested, commit, dest, token, log, progress)
        ctx.selection = selection
        known = {e["path"]: e for e in (old or {}).get("files", []) if isinstance(e, dict) and "path" in e}
        todo, done = [], []
        for rf in selection:
            if _is_complete(dest / rf.path, rf, known.get(rf.path)):
                done.append(rf)
                e = known.get(rf.path)
                ctx.record(rf, e["sha256"] if e and e.get("sha256") else _hash_file(dest / rf.path)[0])
            else:
                todo.append(rf)
        partial_bytes = sum(_partial_size(ctx, rf) for rf in todo)
        need = sum(rf.size for rf in todo) - partial_bytes
        free = _free_bytes(dest)
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
            [rf.path for rf in done],
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
            ctx.write_manifest(False, selection)
            _run_workers(ctx, todo, workers, retries, backoff, partial_bytes)
            ctx.write_manifest(True, selection)
        finally:
            lock.close()
        result.fetch_bytes = ctx.fetch_bytes
        return result
    except GptkitError:
        raise
    except KeyboardInterrupt:
        raise
    except _Multi as e:
        first = _explain(e.first, ctx, url, repo, revision or "main")
        raise _scrub(GptkitError(f"{e.n} of {e.total} files failed; first {e.path}: {first}"), token) from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one line; files on disk stay as they are
        raise _scrub(_explain(e, ctx, url, repo, revision or "main"), token) from None


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


def _is_complete(path: Path, rf: RemoteFile, entry: dict | None) -> bool:
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
    sha256, git_oid = _hash_file(path)
    return _matches(rf, sha256, git_oid)


def _run_workers(
    ctx: _Context, todo: list[RemoteFile], workers: int, retries: int, backoff: float, initial: int
) -> None:
    """Fetch `todo` with a few daemon threads (so Ctrl-C ends the process at once; partial files stay)."""
    if not todo:
        return
    from tqdm.auto import tqdm

    total = sum(rf.size for rf in todo)
    overall = tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="download", disable=not ctx.progress)
    enabled = ctx.progress

    class FileBar(tqdm):  # one bar per file, feeding the overall one
        def __init__(self, *args, **kwargs):
            kwargs["leave"] = False
            kwargs["disable"] = not enabled
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            overall.update(n)
            return super().update(n)

    ctx.bar_class = FileBar
    jobs: queue.Queue = queue.Queue()
    for rf in todo:
        jobs.put(rf)
    errors: list[tuple[RemoteFile, BaseException]] = []

    def log(msg: str) -> None:
        if enabled:
            tqdm.write(msg, file=sys.stderr)
        else:
            ctx.log(msg)

    def work():
        while True:
            try:
                rf = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                _retry(lambda: _fetch_one(ctx, rf), rf.path, log, retries, backoff)
                ctx.write_manifest(False, ctx.selection)
                if not enabled:
                    ctx.log(f"  {rf.path} ({human(rf.size)})")
            except Exception as e:  # noqa: BLE001 - reported after the other files finish
                errors.append((rf, e))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(workers, len(todo))))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        overall.close()
    if errors:
        rf, e = errors[0]
        raise e if len(errors) == 1 else _Multi(rf, e, len(errors), len(todo))


class _Multi(Exception):
    def __init__(self, rf: RemoteFile, e: BaseException, n: int, total: int):
        super().__init__(f"{n} of {total} files failed, first {rf.path}: {_reason(e)}")
        self.first, self.n, self.total, self.path = e, n, total, rf.path


def presets_table() -> list[dict]:
    return [asdict(p) | {"subsets": [s for s, _ in p.subsets]} for p in PRESETS.values()]
