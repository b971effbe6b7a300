"""The Hub API as the mirror speaks it: parsing requests, and the JSON shapes huggingface_hub expects.

Pure functions of a RepoView (gptkit.hub.mirror.catalog); the HTTP side is gptkit.hub.mirror.server.
Malformed input raises HubError with a 4xx status: a path segment that is not UTF-8 once percent-decoded,
a query value that is not what its parameter takes (flags: true/false/1/0; counts: digits).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from gptkit.hub.manifest import lfs_pointer
from gptkit.hub.mirror.catalog import HEX40, TYPE_PREFIXES, HubError, RepoFile, RepoView, safe_rel

API_ACTIONS = ("revision", "tree", "paths-info")


def route(segs: list[str]) -> tuple[str, str, str | None, list[str]] | None:
    """/api/{type}s/REPO[/ACTION/ARGS...] -> (repo_type, repo_id, action, args); None for other paths."""
    if len(segs) < 3 or segs[0] != "api" or segs[1] not in TYPE_PREFIXES:
        return None
    rest = segs[2:]
    for n in (1, 2):
        if len(rest) > n and rest[n] in API_ACTIONS:
            return TYPE_PREFIXES[segs[1]], "/".join(map(segment, rest[:n])), rest[n], rest[n + 1 :]
    if len(rest) in (1, 2):
        return TYPE_PREFIXES[segs[1]], "/".join(map(segment, rest)), None, []
    return None


def resolve_route(segs: list[str]) -> tuple[str, str, str, str] | None:
    """[datasets/]REPO/resolve/REV/PATH -> (repo_type, repo_id, revision, path); None for other paths."""
    repo_type = "model"
    if segs and segs[0] in ("datasets", "spaces"):
        repo_type, segs = TYPE_PREFIXES[segs[0]], segs[1:]
    for n in (1, 2):
        if len(segs) > n + 1 and segs[n] == "resolve":
            path = safe_rel("/".join(map(segment, segs[n + 2 :])))
            return repo_type, "/".join(map(segment, segs[:n])), segment(segs[n + 1]), path
    return None


def segment(raw: str) -> str:
    """One path segment as sent, percent-decoded as UTF-8; HubError 400 if the bytes are not UTF-8.

    The server reads the request line as latin-1, one character per byte sent, so raw UTF-8 bytes and
    their percent-encoding decode alike; `%ff` is refused rather than turned into U+FFFD."""
    data = raw.encode("latin-1") if all(ord(c) < 256 for c in raw) else raw.encode("utf-8")
    try:
        return unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise HubError(400, None, "invalid path: not UTF-8 once percent-decoded") from None


FLAG_VALUES = {"1": True, "true": True, "0": False, "false": False}


def flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter (?recursive=true, ?blobs=1; huggingface_hub sends True/False); absent: false.
    Any other value is a HubError 400."""
    raw = query.get(name, ["false"])[0]
    value = FLAG_VALUES.get(raw.strip().lower())
    if value is None:
        raise HubError(400, None, f"invalid {name}={raw!r}: expected true or false")
    return value


def count(query: dict[str, list[str]], name: str, default: int, minimum: int = 0) -> int:
    """A non-negative integer query parameter (?cursor=N, ?limit=N), at least `minimum`; absent or empty:
    `default`. Anything else is a HubError 400."""
    raw = query.get(name, [""])[0]
    if not raw:
        return default
    try:
        value = int(raw) if raw.isascii() and raw.isdigit() else -1
    except ValueError:  # more digits than int() takes from a string
        value = -1
    if value < minimum:
        raise HubError(400, None, f"invalid {name}={raw!r}: expected a whole number of at least {minimum}")
    return value


def repo_info(view: RepoView, blobs: bool) -> dict[str, Any]:
    """GET /api/{type}s/REPO[/revision/REV]: the repo at one commit; with blobs, each file's size and ids."""
    siblings = []
    for p in sorted(view.files):
        s: dict[str, Any] = {"rfilename": p}
        if blobs:
            e = entry(view, p, False)
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
    return info


def tree_page(
    view: RepoView, path: str, recursive: bool, start: int, page_size: int
) -> tuple[list[dict[str, Any]], int | None]:
    """GET .../tree/REV/PATH: one page of the listing (folders first), and where the next page starts."""
    dirs = view.dirs()
    if path and path not in dirs:
        raise HubError(404, "EntryNotFound", f"{path} does not exist on {view.commit}", view.commit)
    prefix = f"{path}/" if path else ""

    def listed(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

    entries = [(d, True) for d in sorted(dirs) if listed(d)] + [(p, False) for p in sorted(view.files) if listed(p)]
    page = [entry(view, p, is_dir) for p, is_dir in entries[start : start + page_size]]
    return page, (start + page_size if start + page_size < len(entries) else None)


def paths_in_body(raw: bytes, content_type: str) -> list[str]:
    """The paths a paths-info request asks about: a JSON {"paths": [...]} body, or a form."""
    if "json" not in content_type:
        return parse_qs(raw.decode("utf-8", "replace")).get("paths", [])
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise HubError(400, None, "invalid JSON body") from None
    paths = body.get("paths", []) if isinstance(body, dict) else None
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise HubError(400, None, 'expected a JSON body {"paths": [path, ...]}')
    return paths


def paths_info(view: RepoView, paths: list[str]) -> list[dict[str, Any]]:
    """POST .../paths-info/REV: the entries of those paths that exist."""
    dirs = view.dirs()
    out = []
    for p in map(safe_rel, paths):
        if p in view.files:
            out.append(entry(view, p, False))
        elif p in dirs:
            out.append(entry(view, p, True))
    return out


def entry(view: RepoView, path: str, is_dir: bool) -> dict[str, Any]:
    """A file or folder as the Hub's tree and paths-info list it."""
    if is_dir:
        oid = hashlib.sha1(f"{view.commit}:{path}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    f = view.files[path]
    sha, oid = f.hashes()
    out: dict[str, Any] = {"type": "file", "oid": oid, "size": f.size, "path": path}
    if f.lfs:
        out["lfs"] = {"oid": sha, "size": f.size, "pointerSize": len(lfs_pointer(sha, f.size))}
    return out


def file_headers(view: RepoView, f: RepoFile, revision: str, xet_base: str | None) -> dict[str, str]:
    """The headers huggingface_hub reads from a file's HEAD/GET: etag, commit, LFS size; with xet_base, the
    Xet headers an upstream Xet-backed file has through a plain mirror (a Xet client that trusted them
    would leave the mirror for the refresh route, here a 404)."""
    etag = f.etag
    headers = {
        "ETag": f'"{etag}"',
        "X-Repo-Commit": view.commit,
        "Accept-Ranges": "bytes",
        "Cache-Control": "public, max-age=31536000, immutable" if HEX40.match(revision) else "no-cache",
    }
    if f.lfs:
        headers["X-Linked-Etag"] = f'"{etag}"'
        headers["X-Linked-Size"] = str(f.size)
    if xet_base is not None:
        headers["X-Xet-Hash"] = hashlib.sha256(f"xet:{etag}".encode()).hexdigest()
        route = f"/api/{view.repo_type}s/{view.repo_id}/xet-read-token/{view.commit}"
        headers["X-Xet-Refresh-Route"] = xet_base + route
    return headers


def parse_range(header: str, size: int) -> tuple[int, int] | None:
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


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
