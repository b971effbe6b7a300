"""A read-only Hugging Face Hub mirror over repos already on this machine.

The head node of a cluster downloads once (`gptkit download`, or any huggingface_hub client into
its cache); `gptkit mirror serve` then answers the real huggingface_hub and datasets clients of
the other nodes, which only need `HF_ENDPOINT=http://HEAD:PORT`.

Layouts found under each ROOT (searched in this order):

    ROOT/**/.gptkit-download.json          a folder written by `gptkit download` (up to 3 levels
                                           deep); served under the repo id and commit it records
    ROOT[/hub]/{models,datasets}--ORG--NAME  the Hugging Face cache (HF_HOME or HF_HUB_CACHE);
                                           every snapshot and ref in it is a revision
    ROOT/ORG/NAME, ROOT/datasets/ORG/NAME  plain folders (e.g. `--local-dir`); revision `main`

Endpoints (the subset of the Hub API that file downloads and streaming datasets use):

    GET  /api/{models,datasets}/REPO[/revision/REV]     repo info (sha, siblings; ?blobs=1 sizes)
    GET  /api/{models,datasets}/REPO/tree/REV[/PATH]    listing, ?recursive=1, Link-header pages
    POST /api/{models,datasets}/REPO/paths-info/REV     info for given paths (form or JSON body)
    HEAD/GET /REPO/resolve/REV/PATH, /datasets/REPO/resolve/REV/PATH
                                                        file, with Range, ETag, X-Repo-Commit,
                                                        X-Linked-Etag/-Size for LFS-style files

Errors carry the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound), so clients
raise their usual exceptions. Nothing outside a ROOT is ever served: `..` segments are refused and
every file is resolved (symlinks included) and checked to lie inside its ROOT.

`faults=Faults(...)` makes a fraction of requests fail (5xx) and of file bodies stop midway: the
tests use it to show that downloads survive a flaky mirror.
"""

from __future__ import annotations

import collections
import datetime as _dt
import errno
import hashlib
import json
import mimetypes
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gptkit.errors import GptkitError

MANIFEST_NAME = ".gptkit-download.json"
# Names inside a downloaded folder that are bookkeeping, not repo content.
HIDDEN_TOP = {MANIFEST_NAME, ".gptkit", ".cache"}
# Files the Hub stores with Git LFS by default (its standard .gitattributes), plus anything big.
LFS_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".gguf",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".zip",
    ".gz",
    ".tar",
    ".zst",
    ".xz",
    ".7z",
    ".model",
    ".tflite",
    ".ot",
    ".joblib",
    ".wasm",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
API_ACTIONS = ("revision", "tree", "paths-info")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
CHUNK = 256 * 1024
DEFAULT_PAGE_SIZE = 1000  # the Hub's page size for tree listings (50 with expand=true)


class HubError(Exception):
    """An error answered to the client with the Hub's status and X-Error-Code."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


@dataclass
class Faults:
    """Deterministic fault injection: exactly `error_rate` of requests get a 5xx, and `cut_rate` of
    file bodies (GET with a body) stop after part of the bytes and the connection is closed."""

    error_rate: float = 0.0
    cut_rate: float = 0.0
    counts: dict = field(default_factory=lambda: {"5xx": 0, "cut": 0})
    _seen: dict = field(default_factory=lambda: {"5xx": 0, "cut": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _draw(self, kind: str, rate: float) -> bool:
        # Bresenham-style spacing: draw n of a kind fails when floor((n+1)*rate) steps up.
        with self._lock:
            n = self._seen[kind]
            self._seen[kind] = n + 1
            hit = rate > 0 and int((n + 1) * rate) > int(n * rate)
            if hit:
                self.counts[kind] += 1
            return hit

    def request_fails(self) -> bool:
        return self._draw("5xx", self.error_rate)

    def body_cut(self) -> bool:
        return self._draw("cut", self.cut_rate)


# --- hashes -------------------------------------------------------------------------------------

_HASHES: dict[tuple, tuple[str, str]] = {}
_HASH_LOCK = threading.Lock()
_HASHING: dict[tuple, threading.Lock] = {}  # one hashing per file at a time, however many requests want it


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, cached by (real path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        hit = _HASHES.get(key)
        busy = _HASHING.setdefault(key, threading.Lock()) if hit is None else None
    if hit:
        return hit
    with busy:
        with _HASH_LOCK:
            hit = _HASHES.get(key)
        if hit:
            return hit
        sha256, sha1 = hashlib.sha256(), hashlib.sha1()
        sha1.update(f"blob {st.st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha256.update(chunk)
                sha1.update(chunk)
        out = (sha256.hexdigest(), sha1.hexdigest())
        with _HASH_LOCK:
            _HASHES[key] = out
            _HASHING.pop(key, None)
    return out


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def is_lfs_name(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


# --- repos on disk ------------------------------------------------------------------------------


@dataclass
class RepoFile:
    path: str  # inside the repo, '/'-separated
    local: Path  # resolved file on disk, inside a ROOT
    size: int
    lfs: bool
    sha256: str | None = None  # known without hashing (manifest, cache blob name)
    oid: str | None = None  # git blob id, if known without hashing

    def hashes(self) -> tuple[str, str]:
        """(sha256 or None for non-LFS known oids, oid) computing only what is not known."""
        if self.lfs:
            sha = self.sha256 or file_hashes(self.local)[0]
            return sha, self.oid or git_blob_id(lfs_pointer(sha, self.size))
        if self.oid:
            return self.sha256 or "", self.oid
        sha, oid = file_hashes(self.local)
        return sha, oid

    @property
    def etag(self) -> str:
        sha, oid = self.hashes()
        return sha if self.lfs else oid


@dataclass
class RepoView:
    """One repo at one commit: its files, and where they live."""

    repo_type: str
    repo_id: str
    commit: str
    root: Path  # the ROOT it was found under (containment check)
    files: dict[str, RepoFile]
    last_modified: float

    def dirs(self) -> set[str]:
        out = set()
        for p in self.files:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _safe_rel(path: str) -> str:
    """A repo-relative path with no way out: no '..', no absolute, no backslash or NUL."""
    if "\\" in path or "\0" in path or path.startswith("/"):
        raise HubError(400, None, "invalid path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise HubError(400, None, "invalid path")
    return "/".join(parts)


def _walk_files(base: Path, root: Path, skip_top: set[str]) -> dict[str, Path]:
    """Files under base as {relpath: resolved path}, skipping bookkeeping and anything resolving outside root."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        if not rel_dir:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
            filenames = [f for f in filenames if f not in skip_top]
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".incomplete", ".lock")):
                continue
            p = Path(dirpath) / name
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not real.is_file() or not _inside(real, root):
                continue  # e.g. a symlink pointing out of ROOT: never served
            out[f"{rel_dir}/{name}" if rel_dir else name] = real
    return out


class Catalog:
    """Finds repos under a list of ROOTs, re-reading the disk as it changes."""

    def __init__(self, roots: list[Path]):
        self.roots = [Path(r).resolve() for r in roots]
        self._manifests: dict[Path, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    # gptkit download folders, indexed by their manifests (re-scanned at most every 2 s)
    def _manifest_index(self, root: Path) -> dict[tuple[str, str], Path]:
        now = time.monotonic()
        with self._lock:
            hit = self._manifests.get(root)
            if hit and now - hit[0] < 2.0:
                return hit[1]
        index: dict[tuple[str, str], Path] = {}
        for depth in range(4):
            pattern = "/".join(["*"] * depth + [MANIFEST_NAME])
            for m in sorted(root.glob(pattern)):
                if any(part.startswith(".") for part in m.relative_to(root).parts[:-1]):
                    continue
                info = _read_json(m)
                if not info or "repo_id" not in info:
                    continue
                key = (info.get("repo_type", "model"), info["repo_id"])
                index.setdefault(key, m.parent)
        with self._lock:
            self._manifests[root] = (now, index)
        return index

    def repos(self) -> list[tuple[str, str, str]]:
        """(repo_type, repo_id, location) of everything served, for the index page and the CLI."""
        out = []
        for root in self.roots:
            for (rtype, rid), folder in self._manifest_index(root).items():
                out.append((rtype, rid, str(folder)))
            for base in (root, root / "hub"):
                if not base.is_dir():
                    continue
                for d in sorted(base.iterdir()):
                    m = re.match(r"^(models|datasets|spaces)--(.+)$", d.name)
                    if m and (d / "snapshots").is_dir():
                        out.append((TYPE_PREFIXES[m.group(1)], m.group(2).replace("--", "/"), str(d)))
            out += self._plain_repos(root)
        return out

    def find(self, repo_type: str, repo_id: str, revision: str) -> RepoView:
        if not all(SEGMENT_RE.match(s) and s not in (".", "..") for s in repo_id.split("/")) or repo_id.count("/") > 1:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        for root in self.roots:
            folder = self._manifest_index(root).get((repo_type, repo_id))
            if folder is not None:
                return self._from_download(root, folder, repo_type, repo_id, revision)
            for base in (root / "hub", root):
                storage = base / f"{repo_type}s--{repo_id.replace('/', '--')}"
                if (storage / "snapshots").is_dir():
                    return self._from_cache(root, storage, repo_type, repo_id, revision)
            for plain in self._plain_candidates(root, repo_type, repo_id):
                if self._is_plain_repo(root, plain):
                    return self._from_plain(root, plain, repo_type, repo_id, revision)
        raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")

    @staticmethod
    def _is_plain_repo(root: Path, folder: Path) -> bool:
        """A plain folder, not part of a downloaded repo or of the HF cache (nor reached through a symlink out)."""
        if not folder.is_dir() or not _inside(folder.resolve(), root):
            return False
        rel = folder.relative_to(root).parts
        if any(p.startswith(".") or re.match(r"^(models|datasets|spaces)--", p) for p in rel):
            return False
        return not any((root.joinpath(*rel[:i]) / MANIFEST_NAME).exists() for i in range(1, len(rel) + 1))

    def _plain_repos(self, root: Path) -> list[tuple[str, str, str]]:
        out = []
        for top in sorted(p for p in root.iterdir() if p.is_dir()):
            if top.name in ("datasets", "models"):
                rtype, orgs = TYPE_PREFIXES[top.name], sorted(p for p in top.iterdir() if p.is_dir())
                pairs = [(rtype, org, name) for org in orgs for name in sorted(org.iterdir())]
            else:
                pairs = [("model", top, name) for name in sorted(top.iterdir())]
            for rtype, org, name in pairs:
                if self._is_plain_repo(root, name) and SEGMENT_RE.match(org.name) and SEGMENT_RE.match(name.name):
                    out.append((rtype, f"{org.name}/{name.name}", str(name)))
        return out

    @staticmethod
    def _plain_candidates(root: Path, repo_type: str, repo_id: str) -> list[Path]:
        if repo_type == "model":
            return [root / repo_id, root / "models" / repo_id]
        return [root / f"{repo_type}s" / repo_id]

    def _from_download(self, root, folder, repo_type, repo_id, revision) -> RepoView:
        info = _read_json(folder / MANIFEST_NAME) or {}
        commit = info.get("commit") or _synthetic_commit(folder)
        names = {commit, "main", info.get("revision") or "main"}
        if revision not in names and not (len(revision) >= 7 and commit.startswith(revision)):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        known = {e["path"]: e for e in info.get("files", []) if isinstance(e, dict) and "path" in e}
        files = {}
        for rel, real in _walk_files(folder, root, HIDDEN_TOP).items():
            size = real.stat().st_size
            e = known.get(rel)
            if e and e.get("size") == size:  # trust the manifest only while the file is unchanged
                files[rel] = RepoFile(rel, real, size, bool(e.get("lfs")), e.get("sha256"), e.get("oid"))
            else:
                files[rel] = RepoFile(rel, real, size, is_lfs_name(rel, size))
        return RepoView(repo_type, repo_id, commit, root, files, _mtime(folder / MANIFEST_NAME))

    def _from_cache(self, root, storage, repo_type, repo_id, revision) -> RepoView:
        rev = _safe_rel(revision)
        if HEX40.match(rev) and (storage / "snapshots" / rev).is_dir():
            commit = rev
        else:
            ref = storage / "refs" / rev
            if not ref.is_file() or not _inside(ref.resolve(), root):
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            commit = ref.read_text().strip()
            if not HEX40.match(commit) or not (storage / "snapshots" / commit).is_dir():
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        snap = storage / "snapshots" / commit
        files = {}
        for rel, real in _walk_files(snap, root, set()).items():
            size = real.stat().st_size
            blob = real.name  # blobs are named by their etag: sha256 for LFS files, git sha1 otherwise
            if re.fullmatch(r"[0-9a-f]{64}", blob):
                files[rel] = RepoFile(rel, real, size, True, sha256=blob)
            elif HEX40.match(blob):
                files[rel] = RepoFile(rel, real, size, False, oid=blob)
            else:
                files[rel] = RepoFile(rel, real, size, is_lfs_name(rel, size))
        return RepoView(repo_type, repo_id, commit, root, files, _mtime(snap))

    def _from_plain(self, root, folder, repo_type, repo_id, revision) -> RepoView:
        walked = _walk_files(folder, root, HIDDEN_TOP)
        files, commits, n_meta = {}, set(), 0
        for rel, real in walked.items():
            st = real.stat()
            f = RepoFile(rel, real, st.st_size, is_lfs_name(rel, st.st_size))
            hf = _hf_local_metadata(folder, rel, st.st_mtime)
            if hf is not None:  # `hf download --local-dir` recorded the commit and etag of this file
                commits.add(hf[0])
                n_meta += 1
                if re.fullmatch(r"[0-9a-f]{64}", hf[1]):
                    f.lfs, f.sha256 = True, hf[1]
                elif HEX40.match(hf[1]):
                    f.lfs, f.oid = False, hf[1]
            files[rel] = f
        # One recorded commit for every file: serve it as that commit; otherwise a stable stand-in.
        if len(commits) == 1 and n_meta == len(walked):
            commit = commits.pop()
        else:
            commit = _synthetic_commit(folder, walked)
        if revision not in ("main", commit):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return RepoView(repo_type, repo_id, commit, root, files, _mtime(folder))


def _hf_local_metadata(folder: Path, rel: str, mtime: float) -> tuple[str, str] | None:
    """(commit, etag) from huggingface_hub's local-dir bookkeeping, if present and not older than the file."""
    meta = folder / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
    try:
        commit, etag, stamp = meta.read_text().splitlines()[:3]
        if mtime - 1 <= float(stamp) and HEX40.match(commit.strip()):
            return commit.strip(), etag.strip()
    except (OSError, ValueError):
        pass
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _synthetic_commit(folder: Path, walked: dict[str, Path] | None = None) -> str:
    """A stable 40-hex 'commit' for a folder with no recorded one: changes when its files change."""
    h = hashlib.sha1(b"gptkit-mirror")
    for rel, real in sorted((walked if walked is not None else {}).items()):
        st = real.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if walked is None:
        h.update(str(folder).encode())
    return h.hexdigest()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _entry(view: RepoView, path: str, is_dir: bool) -> dict:
    if is_dir:
        return {
            "type": "directory",
            "oid": hashlib.sha1(f"{view.commit}:{path}".encode()).hexdigest(),
            "size": 0,
            "path": path,
        }
    f = view.files[path]
    sha, oid = f.hashes()
    out = {"type": "file", "oid": oid, "size": f.size, "path": path}
    if f.lfs:
        out["lfs"] = {"oid": sha, "size": f.size, "pointerSize": len(lfs_pointer(sha, f.size))}
    return out


# --- HTTP ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every response carries Content-Length
    server_version = "gptkit-mirror"
    timeout = 120  # idle keep-alive connections do not hold a thread forever

    # -- plumbing --
    @property
    def mirror(self) -> MirrorServer:
        return self.server.mirror  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        if self.mirror.access_log is not None:
            self.mirror.access_log(f"{self.address_string()} {format % args}")

    def _record(self, status: int, sent: int = 0, note: str = "") -> None:
        self.mirror.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "status": status,
                "range": self.headers.get("Range"),
                "sent": sent,
                "auth": bool(self.headers.get("Authorization")),
                "note": note,
            }
        )

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._record(status, len(body) if self.command != "HEAD" else 0)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError):
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        self._json({"error": e.message}, e.status, headers)

    def _dispatch(self):
        m = self.mirror
        with m._lock:
            m.in_flight += 1
            m.max_in_flight = max(m.max_in_flight, m.in_flight)
        try:
            if self.mirror.faults and self.mirror.faults.request_fails():
                self._drain_body()
                self._send(503, b'{"error":"injected fault"}')
                return
            self._route()
        except HubError as e:
            self._drain_body()
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with m._lock:
                m.in_flight -= 1

    def _drain_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n and not getattr(self, "_body_read", False):
            self.rfile.read(n)
            self._body_read = True

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _read_only(self):
        self._drain_body()
        self._send(405, b'{"error":"this mirror is read-only"}', {"Allow": "GET, HEAD, POST"})

    do_PUT = do_DELETE = do_PATCH = _read_only

    # -- routing (on the raw path: revisions and paths come percent-encoded, '/' as %2F) --
    def _route(self):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        segs = parts.path.split("/")[1:]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        if self.command == "POST" and not (len(segs) > 3 and segs[0] == "api"):
            return self._read_only()
        if not segs or segs == [""]:
            return self._index()
        if segs[0] == "api" and len(segs) >= 3 and segs[1] in TYPE_PREFIXES:
            return self._api(TYPE_PREFIXES[segs[1]], segs[2:], query)
        repo_type = "model"
        if segs[0] in ("datasets", "spaces"):
            repo_type, segs = TYPE_PREFIXES[segs[0]], segs[1:]
        for n in (1, 2):
            if len(segs) > n + 1 and segs[n] == "resolve":
                repo_id = "/".join(unquote(s) for s in segs[:n])
                revision = unquote(segs[n + 1])
                path = _safe_rel("/".join(unquote(s) for s in segs[n + 2 :]))
                return self._resolve(repo_type, repo_id, revision, path)
        raise HubError(404, None, "Not found")

    def _split_repo(self, rest: list[str]) -> tuple[str, str | None, list[str]]:
        """rest after /api/{type}s/ -> (repo_id, action, args)."""
        for n in (1, 2):
            if len(rest) > n and rest[n] in API_ACTIONS:
                return "/".join(unquote(s) for s in rest[:n]), rest[n], rest[n + 1 :]
        if len(rest) in (1, 2):
            return "/".join(unquote(s) for s in rest), None, []
        raise HubError(404, None, "Not found")

    def _api(self, repo_type: str, rest: list[str], query: dict):
        repo_id, action, args = self._split_repo(rest)
        if self.command == "POST" and action != "paths-info":
            return self._read_only()
        if action is None:
            return self._repo_info(self.mirror.catalog.find(repo_type, repo_id, "main"), query)
        if not args:
            raise HubError(404, None, "Not found")
        revision = unquote(args[0])
        view = self.mirror.catalog.find(repo_type, repo_id, revision)
        if action == "revision":
            return self._repo_info(view, query)
        path = _safe_rel("/".join(unquote(s) for s in args[1:]))
        if action == "tree":
            return self._tree(view, path, query)
        return self._paths_info(view)

    # -- endpoints --
    def _index(self):
        repos = [{"type": t, "id": i} for t, i, _ in self.mirror.catalog.repos()]
        self._json({"mirror": "gptkit", "repos": repos})

    def _repo_info(self, view: RepoView, query: dict):
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p in sorted(view.files):
            s = {"rfilename": p}
            if blobs:
                e = _entry(view, p, False)
                s.update(size=e["size"], blobId=e["oid"])
                if "lfs" in e:
                    s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
            siblings.append(s)
        info = {
            "_id": hashlib.sha1(f"{view.repo_type}/{view.repo_id}".encode()).hexdigest()[:24],
            "id": view.repo_id,
            "author": view.repo_id.split("/")[0] if "/" in view.repo_id else None,
            "sha": view.commit,
            "lastModified": _iso(view.last_modified),
            "createdAt": _iso(view.last_modified),
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in view.files.values()),
        }
        if view.repo_type == "model":
            info["modelId"] = view.repo_id
        self._json(info)

    def _tree(self, view: RepoView, path: str, query: dict):
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        dirs = view.dirs()
        if path and path not in dirs:
            code = "EntryNotFound"
            raise HubError(404, code, f"{path} does not exist on {view.commit}", view.commit)
        prefix = f"{path}/" if path else ""
        entries = []
        for d in sorted(dirs):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix) :]):
                entries.append((d, True))
        for p in sorted(view.files):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :]):
                entries.append((p, False))
        page_size = self.mirror.page_size if not expand else min(self.mirror.page_size, 50)
        start = int(query.get("cursor", ["0"])[0] or 0)
        page = entries[start : start + page_size]
        headers = {}
        if start + page_size < len(entries):
            parts = urlsplit(self.path)
            q = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs] + [("cursor", str(start + page_size))]
            nxt = f"{self.mirror.url}{parts.path}?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q)
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json([_entry(view, p, d) for p, d in page], headers=headers)

    def _paths_info(self, view: RepoView):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        self._body_read = True
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise HubError(400, None, "invalid JSON body") from None
            paths = body.get("paths", [])
            paths = [paths] if isinstance(paths, str) else paths
        else:
            paths = parse_qs(raw.decode("utf-8", "replace")).get("paths", [])
        dirs = view.dirs()
        out = []
        for p in paths:
            p = _safe_rel(str(p))
            if p in view.files:
                out.append(_entry(view, p, False))
            elif p in dirs:
                out.append(_entry(view, p, True))
        self._json(out)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        if self.command == "POST":
            return self._read_only()
        view = self.mirror.catalog.find(repo_type, repo_id, revision)
        f = view.files.get(path)
        if f is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {view.commit}", view.commit)
        real = f.local.resolve()
        if not _inside(real, view.root) or not real.is_file():  # re-checked at serve time
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {view.commit}", view.commit)
        sha, oid = f.hashes()
        etag = sha if f.lfs else oid
        size = f.size
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": view.commit,
            "Accept-Ranges": "bytes",
            "Last-Modified": self.date_time_string(real.stat().st_mtime),
            "Cache-Control": "public, max-age=31536000, immutable" if HEX40.match(revision) else "no-cache",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(size)
        if self.mirror.xet_headers:
            # What an upstream Xet-backed file looks like through a plain mirror: a Xet client that
            # trusts these would leave the mirror for the refresh route (here: a 404).
            headers["X-Xet-Hash"] = hashlib.sha256(f"xet:{etag}".encode()).hexdigest()
            rtype = f"{repo_type}s"
            headers["X-Xet-Refresh-Route"] = f"{self.mirror.url}/api/{rtype}/{repo_id}/xet-read-token/{view.commit}"
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, b"", headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return self._record(status)
        cut_at = None
        if length > 1 and self.mirror.faults and self.mirror.faults.body_cut():
            cut_at = max(1, length // 2)
        sent = self._send_file(real, start, length, cut_at)
        self._record(status, sent, "cut" if cut_at is not None else "")

    def _send_file(self, real: Path, start: int, length: int, cut_at: int | None) -> int:
        sent = 0
        limit = length if cut_at is None else cut_at
        rate = self.mirror.rate_limit
        t0 = time.monotonic()
        with open(real, "rb") as fh:
            fh.seek(start)
            while sent < limit:
                chunk = fh.read(min(CHUNK if not rate else max(1, min(CHUNK, int(rate) // 20 or 1)), limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if cut_at is not None:
            # Drop the connection mid-body, as a flaky proxy would.
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return sent


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class MirrorServer:
    """A Hub mirror over ROOT folders, in a background thread (context manager) or the foreground.

    with MirrorServer(root, port=0) as srv:       # port 0: a free port
        os.environ["HF_ENDPOINT"] = srv.url
    """

    def __init__(
        self,
        roots: str | Path | list[str | Path],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Faults | None = None,
        rate_limit: float | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        xet_headers: bool = False,
        access_log=None,
    ):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise GptkitError("nothing to serve: give a ROOT folder (e.g. $GPTKIT_HOME/data or the Hugging Face cache)")
        for r in roots:
            if not Path(r).is_dir():
                what = "is not a folder" if Path(r).exists() else "does not exist"
                raise GptkitError(f"mirror ROOT {r} {what}; give a folder of downloaded repos or a Hugging Face cache")
        self.catalog = Catalog([Path(r) for r in roots])
        self.faults = faults
        self.rate_limit = rate_limit  # bytes/s per response, for tests that need slow transfers
        self.page_size = page_size
        self.xet_headers = xet_headers
        self.access_log = access_log
        self.requests: collections.deque = collections.deque(maxlen=100_000)  # for tests: what clients asked
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0  # requests served at the same time, at most (tests: threads really overlap)
        try:
            self._httpd = _HTTPServer((host, port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise GptkitError(f"port {port} on {host} is already in use; pick another with --port") from None
            if e.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(e, socket.gaierror):
                raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
            raise
        self._httpd.mirror = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def warm_hashes(self) -> None:
        """Hash, in the background, the files whose sha256 / git oid nothing recorded (plain folders), so
        that a client's first HEAD (10 s timeout in huggingface_hub) does not wait for a multi-GB hash."""

        def run():
            for rtype, rid, _ in self.catalog.repos():
                try:
                    view = self.catalog.find(rtype, rid, "main")
                except HubError:
                    continue
                for f in view.files.values():
                    if not (f.sha256 if f.lfs else f.oid):
                        try:
                            file_hashes(f.local)
                        except OSError:
                            pass

        threading.Thread(target=run, daemon=True, name="gptkit-mirror-hash").start()

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(roots, host: str = "127.0.0.1", port: int = 8080, **kwargs) -> None:
    """Serve in the foreground until interrupted."""
    MirrorServer(roots, host, port, **kwargs).serve_forever()
