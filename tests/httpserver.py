"""A local HTTP server for tests: static routes with scripted failures, and a request log.

The server binds ``127.0.0.1`` on a random free port and runs
:class:`http.server.ThreadingHTTPServer` in a daemon thread, so tests never touch the
internet and several requests can be in flight at once (the image stage uses a pool).

Routes map a path (``"/a/b.jsonl.gz"``; a query string is ignored when no route names it
exactly) to a :class:`Route`. Plain values are accepted for brevity:

* ``bytes`` -> ``Route(body)``: 200 with ``Content-Length``, ``ETag``, ``Accept-Ranges:
  bytes`` and a ``Content-Type`` guessed from the path;
* ``int`` -> ``Route(status=code)``: that status with a short text body (404, 500, ...).

A :class:`Route` can also script misbehaviour:

=================  =======================================================================
``slow``           seconds to wait before answering (the status line comes late)
``slow_body``      seconds to wait between body chunks of ``chunk_size`` bytes (a trickle)
``fail_times``     the first *k* requests answer ``fail_status`` (503 by default)
``fail_after``     every request after the first *n* answers ``fail_status`` (an outage;
                   set the attribute back to None to end it)
``truncate_first`` the first ``truncate_times`` (default 1) responses with a body declare
                   the full ``Content-Length`` but close the connection after *n* body bytes
``ranges``         honour ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` with 206 and
                   ``Content-Range`` (416 when unsatisfiable); ``If-Range`` with another
                   ETag gets the full 200 body. ``ranges=False``: ignore ``Range``, always
                   200 (and no ``Accept-Ranges`` header)
``if_range``       ``False``: ignore ``If-Range`` and serve the range anyway (a broken server
                   or cache: a resumed download would get another version's tail)
``send_etag``      ``False``: send no ``ETag`` (validators only through ``headers``, e.g.
                   ``Last-Modified``)
``content_type``   override the guessed ``Content-Type``
``headers``        extra response headers (e.g. ``{"Content-Encoding": "gzip"}``)
``content_length`` ``False``: send no ``Content-Length`` (the body ends when the
                   connection closes)
=================  =======================================================================

Counters for ``fail_times`` and ``truncate_first`` live on the route object, so
assigning a new ``Route`` to a path starts afresh. Unknown paths answer 404.

Every request is recorded as a :class:`RecordedRequest` (method, path, headers with
case-insensitive lookup, time, and the status answered) in ``server.requests``; ``server.requests_for(path)``
filters them, e.g. to assert that a resumed download sent ``Range``.

Example::

    from httpserver import LocalHTTPServer, Route

    with LocalHTTPServer({"/data.bin": b"x" * 1000, "/gone": 404}) as server:
        server.add("/flaky", Route(b"payload", fail_times=2))
        server.add("/cut", Route(b"y" * 5000, truncate_first=1000))
        server.add_file("/img/1.jpg", tmp_path / "1.jpg")        # bytes read now
        server.add_directory("/files", tmp_path / "fixtures")    # every file below it
        url = server.url("/cut")                                 # http://127.0.0.1:PORT/cut
        ...
        assert server.requests_for("/cut")[1].headers.get("Range") == "bytes=1000-"

As a pytest fixture (a fresh, empty, started server per test)::

    from httpserver import http_server  # noqa: F401  (registers the fixture in this module)

    def test_something(http_server):
        http_server.add("/a", b"abc")
        ...

(``tests/`` is on ``sys.path`` under pytest's default import mode, so ``import httpserver``
works from any test module or from ``conftest.py``.)
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

import pytest

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Route:
    """One served resource and the misbehaviour scripted for it (see the module docstring)."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    slow: float = 0.0
    slow_body: float = 0.0
    chunk_size: int = 64 * 1024
    fail_times: int = 0
    fail_after: int | None = None
    fail_status: int = 503
    truncate_first: int | None = None
    truncate_times: int = 1
    ranges: bool = True
    content_length: bool = True
    etag: str | None = None
    if_range: bool = True
    send_etag: bool = True
    _hits: int = field(default=0, init=False, repr=False, compare=False)
    _truncated: int = field(default=0, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                  compare=False)

    def __post_init__(self) -> None:
        if self.etag is None:
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    @property
    def hits(self) -> int:
        """How many requests this route has answered (or begun to answer)."""
        return self._hits

    def _next_hit(self) -> int:
        with self._lock:
            self._hits += 1
            return self._hits - 1

    def _take_truncation(self) -> int | None:
        with self._lock:
            if self.truncate_first is None or self._truncated >= self.truncate_times:
                return None
            self._truncated += 1
            return self.truncate_first


def as_route(value: Route | bytes | int) -> Route:
    """``bytes`` -> static 200 route, ``int`` -> a route answering that status, Route as is."""
    if isinstance(value, Route):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Route(bytes(value))
    if isinstance(value, int):
        return Route(status=value)
    raise TypeError(f"a route must be a Route, bytes or an int status, not {type(value).__name__}")


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``headers.get("range")`` is case-insensitive.

    ``status`` is the status the server answered (None while it has not answered yet, or
    when the client went away first).
    """

    method: str
    path: str
    headers: "_Headers"
    time: float
    status: int | None = None


class _Headers(dict):
    """A plain dict of request headers with case-insensitive ``get`` and ``in``."""

    def get(self, key: str, default=None):  # type: ignore[override]
        lowered = key.lower()
        return next((v for k, v in self.items() if k.lower() == lowered), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmrec-test-http/1"
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._recorded.status = code
        super().send_response(code, message)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        self._recorded = owner._record(self.command, self.path, _Headers(self.headers.items()))
        try:
            route = owner._lookup(self.path)
            if route is None:
                self._plain(404, f"no route for {self.path}")
                return
            hit = route._next_hit()
            if route.slow and owner._stopping.wait(route.slow):
                return
            if hit < route.fail_times:
                self._plain(route.fail_status, f"scripted failure {hit + 1}/{route.fail_times}")
                return
            if route.fail_after is not None and hit >= route.fail_after:
                self._plain(route.fail_status, f"scripted outage after {route.fail_after} requests")
                return
            if route.status != 200:
                self._plain(route.status, route.body.decode(errors="replace") or
                            f"status {route.status} for {self.path}")
                return
            self._send_body(route, head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the client gave up (e.g. its timeout); nothing left to do

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _select(self, route: Route) -> tuple[int, bytes, dict[str, str]]:
        """Status, payload and range headers for a 200 route, honouring Range/If-Range."""
        body, total = route.body, len(route.body)
        spec = self.headers.get("Range")
        if not route.ranges or spec is None:
            return 200, body, {}
        if_range = self.headers.get("If-Range")
        if route.if_range and if_range is not None and if_range != route.etag:
            return 200, body, {}
        match = _RANGE.match(spec.strip())
        if match is None or match.groups() == ("", ""):
            return 200, body, {}  # multi-range or malformed: serving everything is allowed
        first, last = match.groups()
        if first == "":
            start, end = max(total - int(last), 0), total - 1
        else:
            start, end = int(first), min(int(last), total - 1) if last else total - 1
        if start >= total or start > end:
            return 416, b"", {"Content-Range": f"bytes */{total}"}
        return 206, body[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{total}"}

    def _send_body(self, route: Route, head: bool) -> None:
        status, payload, extra = self._select(route)
        self.send_response(status)
        self.send_header("Content-Type", route.content_type or _guess_type(self.path))
        if route.content_length:
            self.send_header("Content-Length", str(len(payload)))
        if route.send_etag:
            self.send_header("ETag", route.etag)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in {**extra, **route.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if head or not payload:
            return
        cut = route._take_truncation()
        if cut is not None:
            payload = payload[:cut]
        step = max(route.chunk_size, 1)
        for pos in range(0, len(payload), step):
            if pos and route.slow_body and self.server.owner._stopping.wait(route.slow_body):
                return
            self.wfile.write(payload[pos:pos + step])
        self.wfile.flush()
        self.close_connection = True


def _guess_type(path: str) -> str:
    kind, encoding = mimetypes.guess_type(urlsplit(path).path)
    if encoding == "gzip":
        return "application/gzip"
    return kind or "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "LocalHTTPServer"


class LocalHTTPServer:
    """A started-on-enter HTTP server on ``127.0.0.1:<random port>``; see the module docstring."""

    def __init__(self, routes: Mapping[str, Route | bytes | int] | None = None) -> None:
        self.routes: dict[str, Route | bytes | int] = {}
        self.requests: list[RecordedRequest] = []
        self._log_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        for path, route in (routes or {}).items():
            self.add(path, route)

    # routes ---------------------------------------------------------------------------
    def add(self, path: str, route: Route | bytes | int) -> Route:
        """Serve ``route`` at ``path`` (replacing any previous route there); returns the Route."""
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        self.routes[path] = as_route(route)
        return self.routes[path]  # type: ignore[return-value]

    def add_file(self, path: str, file: str | Path, **route_options) -> Route:
        """Serve the bytes of ``file`` (read now) at ``path``; options as for :class:`Route`."""
        return self.add(path, Route(Path(file).read_bytes(), **route_options))

    def add_directory(self, prefix: str, folder: str | Path, **route_options) -> list[str]:
        """Serve every file below ``folder`` at ``prefix/<relative path>``; returns the paths."""
        folder = Path(folder)
        paths = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            path = prefix.rstrip("/") + "/" + file.relative_to(folder).as_posix()
            self.add_file(path, file, **route_options)
            paths.append(path)
        return paths

    def _lookup(self, raw_path: str) -> Route | None:
        key = raw_path if raw_path in self.routes else urlsplit(raw_path).path
        value = self.routes.get(key)
        if value is None:
            return None
        if not isinstance(value, Route):  # a plain value assigned directly: keep one Route
            value = self.routes[key] = as_route(value)
        return value

    # addresses ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started; use `with LocalHTTPServer() as s:`")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # request log ----------------------------------------------------------------------
    def _record(self, method: str, path: str, headers: "_Headers") -> RecordedRequest:
        record = RecordedRequest(method, path, headers, time.time())
        with self._log_lock:
            self.requests.append(record)
        return record

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path (query string ignored) equals ``path``, oldest first."""
        with self._log_lock:
            return [r for r in self.requests if urlsplit(r.path).path == path or r.path == path]

    def clear_log(self) -> None:
        with self._log_lock:
            self.requests.clear()

    # lifecycle ------------------------------------------------------------------------
    def start(self) -> "LocalHTTPServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"test-http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; handlers still sleeping in ``slow`` wake up and drop their request."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A started, empty :class:`LocalHTTPServer`, stopped after the test."""
    with LocalHTTPServer() as server:
        yield server
