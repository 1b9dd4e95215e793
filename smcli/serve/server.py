"""The HTTP side of ``smcli serve``: a JSON API and one web page over a :class:`SearchEngine`.

Built on the standard library's ``http.server.ThreadingHTTPServer`` (one thread per
connection): no dependency to install, nothing that can be missing offline, and a server
this small needs no framework's routing or middleware. The model work is serialised by the
engine's lock anyway, so an asynchronous server would not answer more queries per second.

    GET  /                      the page (static/index.html, app.js, app.css; no CDN)
    GET  /api/info              model, gallery size, captions, limits
    GET  /api/search?q=TEXT&k=10&shortlist=100          text -> images
    GET  /api/captions?image=ID&k=10&shortlist=100      image -> captions (with --captions)
    POST /api/score   {"pairs": [{"image": ID, "caption": TEXT}, ...]}
    GET  /api/explain?image=ID&caption=TEXT[&format=png]  saliency maps (JSON, or smcli explain's PNG)
    GET  /image/ROW                                   a gallery photo, by its row in the gallery

Errors are JSON, ``{"error": "one line", "status": N}``, with the line the CLI would print
after ``smcli: error:``: 400 for a bad parameter, 404 for an unknown route, image or
service, 405 for a wrong method, 411/413/415 for a POST body that is missing, too large or
not JSON, 414 for a long URL, 421 for a Host header that does not name this server (DNS
rebinding), 503 when Limits.max_connections are already open, 500 (one line in the log,
no trace in the response) for anything else.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from smcli.errors import SmcliError, UsageError, first_line
from smcli.serve.engine import Limits, NotFound, SearchEngine

STATIC = {  # URL -> (file in smcli/serve/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
IO_TIMEOUT_S = 30  # a client that stops sending or reading is dropped


class HTTPError(Exception):
    """A request refused with ``status`` and one line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def load_static() -> dict[str, tuple[bytes, str]]:
    root = resources.files("smcli.serve") / "static"
    return {url: ((root / name).read_bytes(), kind) for url, (name, kind) in STATIC.items()}


class SmcliServer(ThreadingHTTPServer):
    """The listening server; ``engine`` may be set after binding (the port is checked before
    the model loads)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: SearchEngine | None = None, *, log: bool = True):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._workers: dict[threading.Thread, socket.socket] = {}
        self._workers_lock = threading.Lock()
        super().__init__(address, Handler)
        self.engine = engine
        self.log = log
        self.static = load_static()
        self.host_name = host
        self.loopback = host in LOOPBACK_NAMES

    @property
    def limits(self) -> Limits:
        return self.engine.limits if self.engine is not None else Limits()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def allowed_host(self, header: str | None) -> bool:
        """Whether a request's Host header names this server. Bound to loopback, only
        loopback names are accepted, so a web page cannot reach the server through a
        DNS name it controls (DNS rebinding); bound elsewhere, any."""
        if not self.loopback:
            return True
        if not header:
            return False
        port = self.server_address[1]
        return header.lower() in {f"{h}:{port}" for h in LOOPBACK_NAMES} | set(LOOPBACK_NAMES)

    # Connections are tracked so that closing the server ends them and waits for their
    # threads: a process that exits while a thread that ran torch is still winding down can
    # abort in C++ ("terminate called without an active exception").
    # At most Limits.max_connections are open at once: one more is answered 503 at once.
    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="smcli-serve-request", daemon=True)
        with self._workers_lock:
            self._workers = {t: r for t, r in self._workers.items() if t.is_alive()}
            busy = len(self._workers) >= self.limits.max_connections
            if not busy:
                self._workers[thread] = request
        if busy:
            self._refuse(request, f"{self.limits.max_connections} connections are open, the most this "
                                  "server takes; try again")
            return
        thread.start()

    def _refuse(self, request, message: str) -> None:
        body = json.dumps({"error": message, "status": 503}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(1)
            request.sendall(head + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._workers_lock:
            workers = list(self._workers.items())
        for _, request in workers:  # idle keep-alive connections stop waiting for a request
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread, _ in workers:
            thread.join(timeout=IO_TIMEOUT_S)

    def handle_error(self, request, client_address) -> None:  # one line, never a traceback
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            print(f"smcli serve: error: {type(exc).__name__}: {first_line(exc, 200)}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server: SmcliServer
    protocol_version = "HTTP/1.1"
    server_version = "smcli"
    sys_version = ""
    timeout = IO_TIMEOUT_S
    # Headers and body go out as two writes; with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers, 40 ms on Linux loopback, on every answer.
    disable_nagle_algorithm = True

    # -- dispatch ---------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    ROUTES = {  # path -> (allowed methods, handler name)
        "/api/info": (("GET", "HEAD"), "api_info"),
        "/api/search": (("GET", "HEAD"), "api_search"),
        "/api/captions": (("GET", "HEAD"), "api_captions"),
        "/api/score": (("POST",), "api_score"),
        "/api/explain": (("GET", "HEAD"), "api_explain"),
    }

    def _dispatch(self, method: str) -> None:
        self._began = time.perf_counter()
        self._body_done = False
        try:
            if len(self.path) > self.server.limits.max_url_bytes:
                raise HTTPError(414, f"request target of {len(self.path):,} bytes, "
                                     f"at most {self.server.limits.max_url_bytes:,}")
            if not self.server.allowed_host(self.headers.get("Host")):
                raise HTTPError(421, f"host {self.headers.get('Host')!r}: not this server "
                                     f"(use {self.server.url})")
            url = urlsplit(self.path)
            path = url.path
            if path in STATIC or path.startswith("/image/"):
                self._allow(method, ("GET", "HEAD"))
                self._drain_body()
                if path.startswith("/image/"):
                    self._send_image(path[len("/image/"):], method)
                else:
                    body, kind = self.server.static[path]
                    headers = {"Cache-Control": "no-cache"}
                    if path == "/":
                        headers["Content-Security-Policy"] = CSP
                    self._send(200, body, kind, method, headers)
                return
            if path not in self.ROUTES:
                raise HTTPError(404, f"{path}: no such page or API endpoint")
            allowed, name = self.ROUTES[path]
            self._allow(method, allowed)
            params = self._params(url.query)
            body = self._json_body() if method == "POST" else (self._drain_body() or None)
            result = getattr(self, name)(params, body)
            if isinstance(result, tuple):  # (bytes, content type)
                self._send(200, result[0], result[1], method)
            else:
                self._send_json(200, result, method)
        except HTTPError as exc:
            self._send_error_json(exc.status, str(exc), method, exc.headers)
        except NotFound as exc:
            self._send_error_json(404, str(exc), method)
        except SmcliError as exc:
            self._send_error_json(400, str(exc), method)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # never a traceback to the client
            self.log_error("%s %s: %s: %s", method, self.path[:200], type(exc).__name__, first_line(exc, 200))
            self._send_error_json(500, "internal error (the server's log has one line about it)", method)

    def _allow(self, method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            self._drain_body()
            raise HTTPError(405, f"{method} {urlsplit(self.path).path}: method not allowed "
                                 f"(use {' or '.join(m for m in allowed if m != 'HEAD')})",
                            {"Allow": ", ".join(allowed)})

    # -- the API ----------------------------------------------------------------------
    def api_info(self, params: dict[str, str], body) -> dict[str, Any]:
        self._only(params)
        return self.server.engine.info()

    def api_search(self, params: dict[str, str], body) -> dict[str, Any]:
        self._only(params, "q", "k", "shortlist")
        if "q" not in params:
            raise UsageError("q: missing (the text to search for)")
        out = self.server.engine.search(params["q"], self._int(params, "k", 10),
                                        self._int(params, "shortlist", 100))
        for r in out["results"]:
            r["url"] = f"/image/{r['row']}"
        return out

    def api_captions(self, params: dict[str, str], body) -> dict[str, Any]:
        self._only(params, "image", "k", "shortlist")
        if "image" not in params:
            raise UsageError("image: missing (the image id of a gallery image)")
        return self.server.engine.captions_for(params["image"], self._int(params, "k", 10),
                                               self._int(params, "shortlist", 100))

    def api_score(self, params: dict[str, str], body) -> dict[str, Any]:
        self._only(params)
        if not isinstance(body, dict) or set(body) != {"pairs"}:
            raise UsageError('body: must be {"pairs": [{"image": ID, "caption": TEXT}, ...]}')
        return self.server.engine.score(body["pairs"])

    def api_explain(self, params: dict[str, str], body):
        from smcli.render.saliency import compose_json, compose_png

        self._only(params, "image", "caption", "format")
        for name in ("image", "caption"):
            if name not in params:
                raise UsageError(f"{name}: missing")
        fmt = params.get("format", "json")
        if fmt not in ("json", "png"):
            raise UsageError(f"format {fmt!r}: json or png")
        ex, photo = self.server.engine.explain(params["image"], params["caption"])
        if fmt == "json":
            return {**compose_json(ex, photo), "image": params["image"]}
        import io

        buf = io.BytesIO()
        compose_png(ex, photo).save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    # -- parameters and bodies --------------------------------------------------------
    def _params(self, query: str) -> dict[str, str]:
        try:
            parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                              max_num_fields=20, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"query string: {first_line(exc, 120)}") from None
        twice = [k for k, v in parsed.items() if len(v) > 1]
        if twice:
            raise UsageError(f"{twice[0]}: given {len(parsed[twice[0]])} times")
        return {k: v[0] for k, v in parsed.items()}

    @staticmethod
    def _only(params: dict[str, str], *names: str) -> None:
        unknown = sorted(set(params) - set(names))
        if unknown:
            takes = f"this endpoint takes {', '.join(names)}" if names else "this endpoint takes none"
            raise UsageError(f"unknown parameter {unknown[0][:40]!r} ({takes})")

    @staticmethod
    def _int(params: dict[str, str], name: str, default: int) -> int:
        raw = params.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"-?[0-9]{1,12}", raw):
            raise UsageError(f"{name} {raw[:20]!r}: must be a whole number")
        return int(raw)

    def _length(self) -> int | None:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise HTTPError(411, "chunked bodies are not accepted: send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.isdigit():
            self.close_connection = True
            raise HTTPError(400, f"Content-Length {raw[:20]!r}: not a number")
        return int(raw)

    def _drain_body(self) -> None:
        """Read and drop a body sent with a request that takes none (keep-alive stays in step)."""
        n = self._length() or 0
        if n > self.server.limits.max_body_bytes:
            self.close_connection = True
            raise HTTPError(413, f"body of {n:,} bytes, at most {self.server.limits.max_body_bytes:,}")
        if n:
            self.rfile.read(n)
        self._body_done = True

    def _json_body(self) -> Any:
        n = self._length()
        limit = self.server.limits.max_body_bytes
        if n is None:
            self.close_connection = True
            raise HTTPError(411, "POST needs a Content-Length")
        if n > limit:
            self.close_connection = True  # the body is not read
            raise HTTPError(413, f"body of {n:,} bytes, at most {limit:,}")
        data = self.rfile.read(n)
        self._body_done = True
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPError(415, f"Content-Type {kind or 'missing'!r}: send application/json")
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"body: not JSON ({first_line(exc, 80)})") from None

    # -- responses --------------------------------------------------------------------
    def _send_image(self, tail: str, method: str) -> None:
        # only a plain row number names an image; anything else (../, %2e, /etc/...) is a 404
        if not tail.isdigit() or not tail.isascii() or len(tail) > 12 or (tail != "0" and tail.startswith("0")):
            raise HTTPError(404, f"/image/{tail[:60]}: no such gallery image")
        opened = self.server.engine.files.open(int(tail))
        if opened is None:
            raise HTTPError(404, f"/image/{tail}: no such gallery image")
        fh, kind, size = opened
        with fh:
            self._start(200, kind, size, {"Cache-Control": "private, max-age=3600"})
            if method != "HEAD":
                while chunk := fh.read(1 << 16):
                    self.wfile.write(chunk)

    def _send_json(self, status: int, obj: Any, method: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", method, headers)

    def _send_error_json(self, status: int, message: str, method: str, headers: dict[str, str] | None = None):
        announced = self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        if status >= 500 or (announced and not self._body_done):
            self.close_connection = True  # an unread body would be taken for the next request
        self._send_json(status, {"error": message, "status": status}, method,
                        {**(headers or {}), "Cache-Control": "no-store"})

    def _send(self, status: int, body: bytes, kind: str, method: str, headers: dict[str, str] | None = None):
        self._start(status, kind, len(body), headers)
        if method != "HEAD":
            self.wfile.write(body)

    def _start(self, status: int, kind: str, length: int, headers: dict[str, str] | None = None) -> None:
        if self.server.log:  # before the body goes out: a client that has its answer sees the line
            took = (time.perf_counter() - getattr(self, "_began", time.perf_counter())) * 1000
            what = f"{getattr(self, 'command', '') or '-'} {getattr(self, 'path', '')[:120]}"
            print(f"smcli serve: {what} {status} {took:.0f} ms", file=sys.stderr, flush=True)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (malformed request line, headers too long, ...) as JSON."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":  # unparsed: answer in HTTP/1.x
            self.request_version = "HTTP/1.0"
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._send_json(code, {"error": message or phrase, "status": code}, getattr(self, "command", "") or "")

    def log_request(self, code="-", size="-") -> None:
        pass  # _dispatch logs one line per request, with its time

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        """Errors only (log_request is quiet), so even with --quiet."""
        print(f"smcli serve: error: {format % args}", file=sys.stderr, flush=True)


def make_server(host: str = "127.0.0.1", port: int = 8000, engine: SearchEngine | None = None, *,
                log: bool = True) -> SmcliServer:
    """A bound server (port 0: any free port; see ``server.url``); serve with
    ``server.serve_forever()``. One line for an address that cannot be bound."""
    import errno

    try:
        server = SmcliServer((host, port), engine, log=log)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {port}: address already in use on {host} (give another --port, "
                             "or 0 for any free one)") from None
        if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise UsageError(f"--host {host}: not an address of this machine ({first_line(exc, 80)})") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"--port {port}: permission denied (ports below 1024 need root)") from None
        raise
    return server


@contextmanager
def running(server: SmcliServer):
    """Serve ``server`` from a background thread for the duration of a ``with`` block (tests,
    benchmarks, notebooks); it stops and closes on leaving the block."""
    thread = threading.Thread(target=server.serve_forever, name="smcli-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
