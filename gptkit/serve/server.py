"""The HTTP side of `gptkit serve`: the standard library's ThreadingHTTPServer, as the mirror's.

A thread per connection only parses, checks and writes; the model is the engine's thread alone
(gptkit.serve.engine). No dependency: the API is four routes and server-sent events, which
http.server carries as they are, and the openai client and browsers speak HTTP/1.1 to it.

    GET  /                     the page (public: it holds nothing of the model's, and asks for the key)
    GET  /health               {"status": "ok", ...} without a key (load balancers, the page)
    GET  /v1/models            the one model
    POST /v1/completions       OpenAI's completions; "stream": true as server-sent events
    POST /v1/chat/completions  400: no chat format (gptkit.serve.api)

Every error is OpenAI's JSON error body, never a traceback. With a key (GPTKIT_API_KEY, or a file)
every route but / and /health wants `Authorization: Bearer KEY`, compared in constant time; the key
is never logged. CORS headers only for the origin --cors-origin names. A client that goes away is
noticed between tokens (a write fails, or its socket reads end-of-file) and its row is freed.
"""

from __future__ import annotations

import hmac
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from queue import Empty
from typing import Any

from gptkit.serve import api
from gptkit.serve.api import ApiError
from gptkit.serve.engine import Busy, Engine, Event, Job

POLL = 0.2  # s between checks that a waiting client is still there


class ServeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        model_id: str,
        block_size: int,
        api_key: str | None = None,
        cors_origin: str | None = None,
        max_tokens: int = 1024,
        max_request_bytes: int = 1 << 20,
    ):
        self.engine, self.model_id, self.block_size = engine, model_id, block_size
        self.api_key = api_key.encode() if api_key else None
        self.cors_origin = cors_origin
        self.max_tokens, self.max_request_bytes = max_tokens, max_request_bytes
        self.created = int(time.time())
        self.page = resources.files("gptkit.serve").joinpath("page.html").read_bytes()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), Handler)

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="gptkit-serve-http", daemon=True)
        t.start()
        return t


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ServeServer

    def setup(self) -> None:
        super().setup()
        # Server-sent events are many small writes: without TCP_NODELAY each waits for the client's
        # delayed ACK of the one before (40-200 ms on Linux), which capped a stream at a few tokens/s.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: nothing of a request (its key above all) reaches the terminal

    # --- answers -------------------------------------------------------------------------------
    def _headers(self, status: int, ctype: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.close_connection = True
        if self.server.cors_origin:
            self.send_header("Access-Control-Allow-Origin", self.server.cors_origin)
            self.send_header("Vary", "Origin")
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self._headers(status, ctype, len(body))
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode())

    def _error(self, e: ApiError) -> None:
        self._send(e.status, e.body())

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:].strip().encode() if given.startswith("Bearer ") else b""
        return hmac.compare_digest(token, key)

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self._read = False
        try:
            if path in ("/", "/index.html") and method == "GET":
                self._send(200, self.server.page, "text/html; charset=utf-8")
                return
            if path == "/health" and method == "GET":
                self._json(self._health())
                return
            routes = {"/v1/models": "GET", "/v1/completions": "POST", "/v1/chat/completions": "POST"}
            if path not in routes:
                raise ApiError(404, f"no route {path}: this server has /v1/completions, /v1/models, /health and /")
            if not self._authorized():
                raise ApiError(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key")
            if routes[path] != method:
                raise ApiError(405, f"{path} takes {routes[path]}")
            if path == "/v1/models":
                self._json(api.models_body(self.server.model_id, self.server.created))
            elif path == "/v1/chat/completions":
                self._body()  # read, so the connection stays usable
                raise api.CHAT_REFUSED
            else:
                self._completions()
        except ApiError as e:
            if method == "POST" and not self._read:
                self.close_connection = True  # its body is still unread: the connection cannot be reused
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _health(self) -> dict[str, Any]:
        e = self.server.engine
        return {
            "status": "ok",
            "model": self.server.model_id,
            "auth": self.server.api_key is not None,
            "active": e.active,
            "queued": e.queued,
            "generated_tokens": e.generated,
            "max_batch": e.max_batch,
            "max_queue": e.max_queue,
            "max_tokens": self.server.max_tokens,
            "context": self.server.block_size,
        }

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "Content-Length is not a number") from None
        if n > self.server.max_request_bytes:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise ApiError(413, f"the request is {n} bytes; this server takes at most {self.server.max_request_bytes}")
        raw = self.rfile.read(n)
        self._read = True
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the body is not JSON: {e}") from None

    # --- completions ---------------------------------------------------------------------------
    def _completions(self) -> None:
        s = self.server
        req, stream = api.parse_completion(
            self._body(),
            model_id=s.model_id,
            tokenizer=s.engine.tokenizer,
            block_size=s.block_size,
            max_tokens_cap=s.max_tokens,
        )
        try:
            job = s.engine.submit(req)
        except Busy:
            e = s.engine
            raise ApiError(
                429,
                f"the server is busy: {e.max_batch} requests decoding and {e.max_queue} waiting; retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            ) from None
        cid = api.completion_id()
        try:
            if stream:
                self._stream(job, cid)
            else:
                text, end = "", None
                while end is None:
                    ev = self._next(job)
                    if ev.kind == "text":
                        text += ev.text
                    else:
                        end = ev
                if end.kind == "error":
                    raise ApiError(500, end.text, type="server_error")
                self._json(api.completion_body(cid, s.model_id, text, end.finish_reason, self._usage(job, end)))
        finally:
            job.cancel()  # done, or the client went away: either way its row is free

    def _usage(self, job: Job, end: Event) -> dict[str, int]:
        return api.usage(job.req, end.completion_tokens)

    def _gone(self) -> bool:
        """The client closed its side (its socket reads end-of-file, or fails)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _next(self, job: Job) -> Event:
        while True:
            try:
                return job.events.get(timeout=POLL)
            except Empty:
                if self._gone():
                    raise ConnectionResetError from None

    def _stream(self, job: Job, cid: str) -> None:
        s = self.server
        self._headers(200, "text/event-stream; charset=utf-8", None)

        def send(obj: Any) -> None:
            self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
            self.wfile.flush()

        while True:
            ev = self._next(job)
            if ev.kind == "text":
                send(api.completion_body(cid, s.model_id, ev.text, None, None))
                if self._gone():
                    raise ConnectionResetError
            elif ev.kind == "error":
                send({"error": {"message": ev.text, "type": "server_error", "param": None, "code": None}})
                break
            else:
                send(api.completion_body(cid, s.model_id, "", ev.finish_reason, self._usage(job, ev)))
                break
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    # --- methods -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_OPTIONS(self) -> None:
        """A CORS preflight: answered only for --cors-origin."""
        if not self.server.cors_origin:
            self._error(ApiError(405, "CORS is off on this server (gptkit serve --cors-origin ORIGIN turns it on)"))
            return
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", self.server.cors_origin)
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Vary", "Origin")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self._error(ApiError(405, "method not allowed"))

    do_DELETE = do_PATCH = do_PUT


# --- putting it together ------------------------------------------------------------------------


def read_api_key(key_file: str | None, env: dict[str, str]) -> tuple[str | None, str]:
    """The API key and where it came from: --api-key-file, else GPTKIT_API_KEY, else none. Never a
    command-line value: those show in `ps` and shell histories."""
    from gptkit.errors import GptkitError

    if key_file is not None:
        if env.get("GPTKIT_API_KEY"):
            raise GptkitError("give the API key once: --api-key-file or GPTKIT_API_KEY, not both")
        try:
            with open(key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise GptkitError(
                f"--api-key-file {key_file}: cannot read ({getattr(e, 'strerror', None) or e.__class__.__name__})"
            ) from None
        if not key or any(c.isspace() for c in key):
            raise GptkitError(
                f"--api-key-file {key_file}: the key must be one word (the file is empty or holds several)"
            )
        return key, f"from {key_file}"
    key = env.get("GPTKIT_API_KEY", "").strip()
    if key:
        return key, "from GPTKIT_API_KEY"
    return None, "none"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(
    model,
    tokenizer,
    *,
    model_id: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    cors_origin: str | None = None,
    max_batch: int = 8,
    max_queue: int = 16,
    max_tokens: int = 1024,
    max_request_bytes: int = 1 << 20,
    log=None,
) -> ServeServer:
    """The engine's thread started and the socket bound (serve_forever, or serve_in_thread, next)."""
    from gptkit.errors import GptkitError

    if max_batch < 1 or max_queue < 0 or max_tokens < 1:
        raise GptkitError("--max-batch and --max-tokens must be at least 1, --max-queue at least 0")
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, log=log)
    try:
        server = ServeServer(
            engine,
            host=host,
            port=port,
            model_id=model_id,
            block_size=model.config.block_size,
            api_key=api_key,
            cors_origin=cors_origin,
            max_tokens=max_tokens,
            max_request_bytes=max_request_bytes,
        )
    except OSError as e:
        raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    engine.start()
    return server
