"""A read-only Hugging Face Hub mirror over repos already on this machine: the HTTP side.

The head node of a cluster downloads once (`gptkit download`, or any huggingface_hub client into
its cache); `gptkit mirror serve` then answers the real huggingface_hub and datasets clients of
the other nodes, which only need `HF_ENDPOINT=http://HEAD:PORT`. What is served, and from where,
is gptkit.hub.mirror.catalog's business.

Endpoints (the subset of the Hub API that file downloads and streaming datasets use):

    GET  /api/{models,datasets}/REPO[/revision/REV]     repo info (sha, siblings; ?blobs=1 sizes)
    GET  /api/{models,datasets}/REPO/tree/REV[/PATH]    listing, ?recursive=1, Link-header pages (?limit=N)
    POST /api/{models,datasets}/REPO/paths-info/REV     info for given paths (form or JSON body)
    HEAD/GET /REPO/resolve/REV/PATH, /datasets/REPO/resolve/REV/PATH
                                                        file, with Range, ETag, X-Repo-Commit,
                                                        X-Linked-Etag/-Size for LFS-style files

Every error is JSON, {"error": "..."}, with the Hub's X-Error-Code where it has one (RepoNotFound,
RevisionNotFound, EntryNotFound), so clients raise their usual exceptions; a malformed request gets
a 4xx, a bug in the mirror a 500: never a dropped connection. The message is in X-Error-Message too
(all a HEAD answer carries), percent-encoded (UTF-8) if it holds anything but printable ASCII, as is
every header value; the JSON body has the text as is. Every write (POST other than paths-info, PUT,
DELETE, PATCH) gets 405 with X-Error-Code ReadOnly, so `HfApi.upload_file` and friends report a
read-only mirror.

Fault drills: GPTKIT_FAULTS=mirror.error_rate=R answers that fraction of requests with a 503,
mirror.cut_rate=R cuts that fraction of file bodies midway, mirror.rate_limit=B sends at most B
bytes/s per response (see gptkit.faults). They are read per request; `MirrorServer.injected`
counts the faults injected.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import parse_qs, quote, urlsplit

from gptkit import faults
from gptkit.errors import GptkitError
from gptkit.hub.mirror import api
from gptkit.hub.mirror.catalog import Catalog, HubError, RepoView, file_hashes, inside, safe_rel

WRITE_METHODS = ("POST", "PUT", "DELETE", "PATCH")
CHUNK = 256 * 1024
DEFAULT_PAGE_SIZE = 1000  # the Hub's page size for tree listings (50 with expand=true)
MAX_BODY = 1 << 20  # paths-info bodies list paths: a megabyte is thousands of them
FAULT_POINTS = ("mirror.error_rate", "mirror.cut_rate", "mirror.rate_limit")
# Printable ASCII but '%': what a header value keeps as is when it must be percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
# What stays as is when a request path is put back into a URL (a Link header): pchar, '/' and '%' escapes.
_PATH_SAFE = "/%!$&'()*+,;=:@"


def header_value(value: str) -> str:
    """`value` as a header can carry it: as is if printable ASCII, else percent-encoded as UTF-8 (so no
    UnicodeEncodeError on a non-latin-1 message, and no CR/LF or other control character on the wire)."""
    if all(" " <= c <= "~" for c in value):
        return value
    return quote(value, safe=_HEADER_SAFE, encoding="utf-8")


class Request(TypedDict):
    """One answered request, as the `on_request` callback gets it (an access log entry)."""

    client: str  # the client's address
    method: str
    path: str  # as sent, query included
    status: int  # 0: the client went away before an answer
    range: str | None  # the Range header
    sent: int  # body bytes sent
    auth: bool  # an Authorization header came (its value is never kept)
    note: str  # "5xx" or "cut": an injected fault; "client gone": it hung up before the answer was sent
    time: float  # wall clock when the request came in
    seconds: float  # how long the answer took


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every response carries Content-Length
    server_version = "gptkit-mirror"
    timeout = 120  # idle keep-alive connections do not hold a thread forever

    # -- plumbing --
    @property
    def mirror(self) -> MirrorServer:
        return self.server.mirror  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # the access log is the on_request callback

    def _handle(self) -> None:
        self._t0, self._status, self._sent, self._note, self._body_read = time.time(), 0, 0, "", False
        self._in_handle = True
        try:
            try:
                if self.mirror.draw_fault("5xx", "mirror.error_rate"):
                    self._note = "5xx"
                    self._drain_body()
                    self._json({"error": "injected fault"}, 503)
                else:
                    self._route()
            except HubError as e:
                self._drain_body()
                self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._note = self._note or "client gone"
        except Exception:  # a bug, even in answering an error: the traceback goes to stderr, the client gets a 500
            traceback.print_exc(file=sys.stderr)
            self._internal_error()
        finally:
            self._in_handle = False
            self.mirror.request_done(self._record())

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def _record(self) -> Request:
        headers = getattr(self, "headers", None)
        return Request(
            client=self.address_string(),
            method=self.command or "",
            path=getattr(self, "path", ""),
            status=self._status,
            range=headers.get("Range") if headers else None,
            sent=self._sent,
            auth=bool(headers and headers.get("Authorization")),
            note=self._note,
            time=self._t0,
            seconds=time.time() - self._t0,
        )

    def _internal_error(self) -> None:
        """The last resort: a 500 with a JSON body if no answer has started, and the connection closed."""
        self.close_connection = True
        if self._status:
            return  # the status line is sent already: all the client can learn now is a cut answer
        self._headers_buffer: list[bytes] = []  # drop any half-written headers (the base class's buffer)
        try:
            self._json({"error": "internal error of the gptkit mirror"}, 500)
        except OSError:
            self._note = self._note or "client gone"

    def _start(self, status: int, length: int, headers: dict[str, str], content_type: str) -> None:
        lines = [(k, header_value(v)) for k, v in headers.items()]  # checked before anything is buffered
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for k, v in lines:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._status = status

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._start(status, len(body), headers or {}, "application/json")
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._sent = len(body)

    def _json(self, obj: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError) -> None:
        headers = {"X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        if e.status == 405:
            headers["Allow"] = "GET, HEAD"
        self._json({"error": e.message}, e.status, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's answer to a malformed request line or an unknown method, as JSON like the rest."""
        own = not getattr(self, "_in_handle", False)  # the base class's, not ours: log it here
        if own:
            self._t0, self._status, self._sent, self._note = time.time(), 0, 0, ""
        self.close_connection = True
        msg = message or self.responses.get(code, ("error",))[0]
        self._send(code, json.dumps({"error": msg}).encode() if code >= 200 and code not in (204, 304) else b"")
        if own:
            self.mirror.request_done(self._record())

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit():
            self.close_connection = True  # the body's end is unknown: the connection cannot be reused
            raise HubError(400, None, f"invalid Content-Length {raw!r}")
        return int(raw)

    def _read_body(self) -> bytes:
        n = self._content_length()
        if n > MAX_BODY:
            self.close_connection = True
            raise HubError(413, None, f"request body over {MAX_BODY} bytes")
        self._body_read = True
        return self.rfile.read(n) if n else b""

    def _drain_body(self) -> None:
        """Read an unread request body, so the connection can serve the next request."""
        if self._body_read or self.close_connection:
            return
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit() or int(raw) > MAX_BODY:
            self.close_connection = True
        elif int(raw):
            self.rfile.read(int(raw))
        self._body_read = True

    # -- routing (on the raw path: revisions and paths come percent-encoded, '/' as %2F) --
    def _route(self) -> None:
        parts = urlsplit(self.path)
        segs = parts.path.split("/")[1:]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        api_route = api.route(segs)
        paths_info = self.command == "POST" and api_route is not None and api_route[2] == "paths-info"
        if self.command in WRITE_METHODS and not paths_info:
            raise HubError(405, "ReadOnly", "this gptkit mirror is read-only: uploads and other writes go to the Hub")
        if not segs or segs == [""]:
            return self._index()
        if api_route is not None:
            return self._api(*api_route, query=parse_qs(parts.query))
        file = api.resolve_route(segs)
        if file is None:
            raise HubError(404, None, "Not found")
        return self._resolve(*file)

    def _api(self, repo_type: str, repo_id: str, action: str | None, args: list[str], query: dict[str, list[str]]):
        if action is None:
            return self._repo_info(self.mirror.catalog.find(repo_type, repo_id, "main"), query)
        if not args:
            raise HubError(404, None, "Not found")
        view = self.mirror.catalog.find(repo_type, repo_id, api.segment(args[0]))
        if action == "revision":
            return self._repo_info(view, query)
        path = safe_rel("/".join(map(api.segment, args[1:])))
        if action == "tree":
            return self._tree(view, path, query)
        return self._paths_info(view)

    # -- one method per route --
    def _index(self) -> None:
        repos = [{"type": t, "id": i} for t, i, _ in self.mirror.catalog.repos()]
        self._json({"mirror": "gptkit", "repos": repos})

    def _repo_info(self, view: RepoView, query: dict[str, list[str]]) -> None:
        self._json(api.repo_info(view, blobs=api.flag(query, "blobs")))

    def _tree(self, view: RepoView, path: str, query: dict[str, list[str]]) -> None:
        cursor = api.count(query, "cursor", 0)
        recursive, expand = api.flag(query, "recursive"), api.flag(query, "expand")
        page_size = min(self.mirror.page_size, 50) if expand else self.mirror.page_size
        page_size = min(page_size, api.count(query, "limit", page_size, minimum=1))
        page, more = api.tree_page(view, path, recursive, cursor, page_size)
        headers = {}
        if more:
            q = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs] + [("cursor", str(more))]
            here = quote(urlsplit(self.path).path, safe=_PATH_SAFE, encoding="latin-1")  # the bytes as sent
            nxt = f"{self.mirror.url}{here}?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q)
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)

    def _paths_info(self, view: RepoView) -> None:
        paths = api.paths_in_body(self._read_body(), self.headers.get("Content-Type") or "")
        self._json(api.paths_info(view, paths))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        view = self.mirror.catalog.find(repo_type, repo_id, revision)
        f = view.files.get(path)
        real = f.local.resolve() if f is not None else None
        if f is None or real is None or not inside(real, view.root) or not real.is_file():  # re-checked at serve time
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {view.commit}", view.commit)
        size = f.size
        headers = api.file_headers(view, f, revision, self.mirror.url if self.mirror.xet_headers else None)
        headers["Last-Modified"] = self.date_time_string(real.stat().st_mtime)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            parsed = api.parse_range(rng, size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, b"", headers)
            (start, end), status = parsed, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        self._start(status, length, headers, mimetypes.guess_type(path)[0] or "application/octet-stream")
        if self.command == "HEAD":
            return
        cut_at = None
        if length > 1 and self.mirror.draw_fault("cut", "mirror.cut_rate"):
            cut_at, self._note = max(1, length // 2), "cut"
        self._send_file(real, start, length, cut_at)

    def _send_file(self, real: Path, start: int, length: int, cut_at: int | None) -> None:
        limit = length if cut_at is None else cut_at
        rate = faults.number("mirror.rate_limit")
        step = CHUNK if not rate else max(1, min(CHUNK, int(rate) // 20))
        t0 = time.monotonic()
        with open(real, "rb") as fh:
            fh.seek(start)
            while self._sent < limit:
                chunk = fh.read(min(step, limit - self._sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                self._sent += len(chunk)
                if rate and (ahead := self._sent / rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)
        if cut_at is not None:  # drop the connection mid-body, as a flaky proxy would
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class MirrorServer:
    """A Hub mirror over ROOT folders, in a background thread (context manager) or the foreground.

        with MirrorServer(root, port=0) as srv:       # port 0: a free port
            os.environ["HF_ENDPOINT"] = srv.url

    on_request(Request) is called after each answered request, from the thread that served it (an
    access log; tests record what clients asked). `injected` counts the faults injected so far
    ({"5xx": n, "cut": n}); GPTKIT_FAULTS sets their rates (module docstring).
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        xet_headers: bool = False,
        on_request: Callable[[Request], None] | None = None,
    ):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise GptkitError("nothing to serve: give a ROOT folder (e.g. $GPTKIT_HOME/data or the Hugging Face cache)")
        for r in roots:
            if not Path(r).is_dir():
                what = "is not a folder" if Path(r).exists() else "does not exist"
                raise GptkitError(f"mirror ROOT {r} {what}; give a folder of downloaded repos or a Hugging Face cache")
        for point in FAULT_POINTS:
            faults.number(point)  # a malformed GPTKIT_FAULTS fails here, in one line, not in every request
        self.catalog = Catalog([Path(r) for r in roots])
        self.page_size = page_size
        self.xet_headers = xet_headers  # advertise Xet as hf-mirror.com passes the Hub's through (tests)
        self.on_request = on_request
        self.injected = {"5xx": 0, "cut": 0}
        self._draws = {"5xx": 0, "cut": 0}
        self._lock = threading.Lock()
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

    def draw_fault(self, kind: str, point: str) -> bool:
        """Whether to inject a fault of `kind` now: exactly the fraction set at `point`, evenly spaced (the
        n-th draw hits when floor((n+1)*rate) steps up), so a test sees the same faults every run."""
        rate = faults.number(point)
        with self._lock:
            n = self._draws[kind]
            self._draws[kind] = n + 1
            hit = rate > 0 and int((n + 1) * rate) > int(n * rate)
            if hit:
                self.injected[kind] += 1
        return hit

    def request_done(self, request: Request) -> None:
        if self.on_request is not None:
            self.on_request(request)

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def warm_hashes(self) -> None:
        """Hash, in the background, the files whose sha256 / git oid nothing recorded (plain folders), so
        that a client's first HEAD (10 s timeout in huggingface_hub) does not wait for a multi-GB hash."""

        def run() -> None:
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

    def __exit__(self, *exc: object) -> None:
        self.stop()
