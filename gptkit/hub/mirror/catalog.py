"""The repos a mirror serves: found under ROOT folders, each a RepoView of one commit.

Layouts found under each ROOT (searched in this order):

    ROOT/**/.gptkit-download.json          a folder written by `gptkit download` (up to 3 levels
                                           deep); served under the repo id and commit it records
    ROOT[/hub]/{models,datasets}--ORG--NAME  the Hugging Face cache (HF_HOME or HF_HUB_CACHE);
                                           every snapshot and ref in it is a revision
    ROOT/ORG/NAME, ROOT/datasets/ORG/NAME  plain folders (e.g. `--local-dir`); revision `main`

Branches. A download folder is served at the revision its manifest records and at its commit; a
folder of main, a commit or a tag is also served as `main`, a folder of a `refs/...` branch (e.g.
`refs/convert/parquet`, `refs/pr/7`) only under that name. Several folders may hold one repo, one per
branch: ROOT/hellaswag (main) beside ROOT/hellaswag-parquet (refs/convert/parquet), say; a request
takes the folder whose recorded revision or commit it names, else for `main` the first that serves
main. In the HF cache a branch is a ref file as huggingface_hub writes it: refs/main, and
refs/refs/convert/parquet for the convert branch. Clients send the revision percent-encoded
(refs%2Fconvert%2Fparquet) in /api/.../revision/REV, /tree/REV and /resolve/REV/...

Nothing outside a ROOT is ever served: `..` segments are refused and every file is resolved
(symlinks included) and checked to lie inside its ROOT. Hashes come from what the layout records
(the download manifest, the cache's blob names, huggingface_hub's local-dir metadata) and are
computed, once per file version, only where nothing recorded them.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gptkit.hub.manifest import MANIFEST_NAME, hash_file, lfs_oid, read_manifest

# Names inside a downloaded folder that are bookkeeping, not repo content.
HIDDEN_TOP = {MANIFEST_NAME, ".gptkit", ".cache"}
# Files the Hub stores with Git LFS by default (its standard .gitattributes), plus anything big.
LFS_SUFFIXES = tuple(
    ".parquet .arrow .safetensors .bin .pt .pth .ckpt .h5 .msgpack .onnx .gguf .npy .npz .pkl .pickle .zip .gz "
    ".tar .zst .xz .7z .model .tflite .ot .joblib .wasm".split()
)
LFS_MIN_SIZE = 10 * 1024 * 1024
TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """An error answered to the client with the Hub's status and X-Error-Code."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


# --- hashes -------------------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int], tuple[str, str]] = {}
_HASH_LOCK = threading.Lock()
_HASHING: dict[
    tuple[str, int, int], threading.Lock
] = {}  # one hashing per file at a time, however many requests want it


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob id) of a file, cached by (path, size, mtime); one hashing per file at a time."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        hit = _HASHES.get(key)
        if hit:
            return hit
        busy = _HASHING.setdefault(key, threading.Lock())
    with busy:
        with _HASH_LOCK:
            hit = _HASHES.get(key)
        if hit:
            return hit
        out = hash_file(path)
        with _HASH_LOCK:
            _HASHES[key] = out
            _HASHING.pop(key, None)
    return out


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
            return sha, self.oid or lfs_oid(sha, self.size)
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


def inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def safe_rel(path: str) -> str:
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
            if not real.is_file() or not inside(real, root):
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
    def _manifest_index(self, root: Path) -> dict[tuple[str, str], list[Path]]:
        now = time.monotonic()
        with self._lock:
            hit = self._manifests.get(root)
            if hit and now - hit[0] < 2.0:
                return hit[1]
        index: dict[tuple[str, str], list[Path]] = {}
        for depth in range(4):
            pattern = "/".join(["*"] * depth + [MANIFEST_NAME])
            for m in sorted(root.glob(pattern)):
                if any(part.startswith(".") for part in m.relative_to(root).parts[:-1]):
                    continue
                info = read_manifest(m.parent)
                if info is None:
                    continue
                key = (info.get("repo_type", "model"), info["repo_id"])
                index.setdefault(key, []).append(m.parent)
        with self._lock:
            self._manifests[root] = (now, index)
        return index

    def repos(self) -> list[tuple[str, str, str]]:
        """(repo_type, repo_id, location) of everything served, for the index page and the CLI."""
        out = []
        for root in self.roots:
            for (rtype, rid), folders in self._manifest_index(root).items():
                out += [(rtype, rid, str(folder)) for folder in folders]
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
            folders = self._manifest_index(root).get((repo_type, repo_id))
            if folders:
                return self._from_download(root, _pick_folder(folders, revision), repo_type, repo_id, revision)
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
        if not folder.is_dir() or not inside(folder.resolve(), root):
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

    def _from_download(self, root: Path, folder: Path, repo_type: str, repo_id: str, revision: str) -> RepoView:
        info = read_manifest(folder) or {}
        commit = info.get("commit") or _synthetic_commit(folder)
        if _serves(info, commit, revision) is None:
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

    def _from_cache(self, root: Path, storage: Path, repo_type: str, repo_id: str, revision: str) -> RepoView:
        rev = safe_rel(revision)
        if HEX40.match(rev) and (storage / "snapshots" / rev).is_dir():
            commit = rev
        else:
            ref = storage / "refs" / rev
            if not ref.is_file() or not inside(ref.resolve(), root):
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

    def _from_plain(self, root: Path, folder: Path, repo_type: str, repo_id: str, revision: str) -> RepoView:
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


def _serves(info: dict, commit: str, revision: str) -> int | None:
    """How well a download folder (its manifest, its commit) answers `revision`: 0 by its recorded revision
    or commit, 1 as `main` (a folder of main, a commit or a tag; never one of a refs/... branch), None not."""
    recorded = info.get("revision") or "main"
    if revision in (recorded, commit) or (len(revision) >= 7 and commit.startswith(revision)):
        return 0
    if revision == "main" and not recorded.startswith("refs/"):
        return 1
    return None


def _pick_folder(folders: list[Path], revision: str) -> Path:
    """The download folder of one repo that serves `revision` best (the first found on a tie), else the first."""
    ranked = []
    for i, folder in enumerate(folders):
        info = read_manifest(folder) or {}
        rank = _serves(info, info.get("commit") or _synthetic_commit(folder), revision)
        if rank is not None:
            ranked.append((rank, i))
    return folders[min(ranked)[1]] if ranked else folders[0]


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
