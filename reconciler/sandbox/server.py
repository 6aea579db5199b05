"""The sandbox's HTTP server: ``Sandbox`` for tests and the demo, ``serve`` for the CLI.

Standard library only. HTTP/1.1 keep-alive with exact ``Content-Length`` lets httpx reuse
connections; each response goes out in one write with Nagle disabled, so small replies are
not held back by delayed ACKs. One thread per connection (``ThreadingHTTPServer``), so
injected latency overlaps across parallel clients.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from reconciler.errors import ConfigError
from reconciler.sandbox.app import Request, SandboxApp
from reconciler.sandbox.capacity import Load
from reconciler.sandbox.config import SandboxConfig
from reconciler.sandbox.replies import Reply

__all__ = ["Sandbox", "SandboxConfig", "serve"]


class _BadRequest(Exception):
    """The request's framing is unusable; answer 400 and close."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        """End kept-alive connections, so a stopped sandbox really stops answering."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "reconcile-sandbox"
    sys_version = ""
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.config.verbose:
            super().log_message(format, *args)

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._write(Reply(400, f"{exc}\n".encode(), "text/plain; charset=UTF-8"))
            return
        split = urlsplit(self.path)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qsl(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=f"http://{host}",
        )
        reply = self.server.app.handle(request)
        if reply.drop:
            self.close_connection = True
            self.log_message('"%s" dropped after commit', self.requestline)
            return
        self._write(reply)

    def _read_body(self) -> bytes | None:
        """Read the whole body first, so an early error never desyncs a kept-alive stream."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        try:
            size = int(length)
        except ValueError:
            raise _BadRequest(f"invalid Content-Length: {length!r}") from None
        if size < 0:
            raise _BadRequest(f"invalid Content-Length: {length!r}")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("invalid chunked encoding") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(3)  # the CRLF after each chunk

    def _write(self, reply: Reply) -> None:
        headers = [("Server", self.version_string()), ("Date", self.date_time_string())]
        if reply.status != HTTPStatus.NO_CONTENT:
            if reply.content_type:
                headers.append(("Content-Type", reply.content_type))
            headers.append(("Content-Length", str(len(reply.body))))
        if self.close_connection:
            headers.append(("Connection", "close"))
        headers.extend(reply.headers)
        head = f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.wfile.write(head.encode("latin-1") + b"\r\n" + reply.body)
        self.log_request(reply.status, len(reply.body))


class Sandbox:
    """A sandbox serving in a background thread; usable as a context manager.

    The test accessors (``images``, ``add_image``, ``delete_image``, ``request_count``)
    bypass HTTP, faults and auth.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._app = SandboxApp(self.config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._holds: list[threading.Event] = []

    def start(self) -> Sandbox:
        """Bind and serve; returns self so ``Sandbox(cfg).start()`` reads naturally."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._server = _Server((self.config.host, self.config.port), self._app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and wait for the serving thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        for hold in self._holds:
            hold.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running sandbox."""
        return f"http://{self.config.host}:{self.port}"

    def images(self) -> list[dict[str, Any]]:
        """Copies of all stored images, oldest first."""
        return [_copy(r.image) for r in self._app.store.records()]

    def add_image(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an image directly, unvalidated, as another tool might have."""
        return _copy(self._app.add_foreign_image(body))

    def delete_image(self, image_id: str) -> bool:
        """Delete out of band (ignores ``protected``); False if there was no such image."""
        return self._app.store.delete(image_id)

    def script(self, name: str, *, post: str | Iterable[str] = (),
               get: str | Iterable[str] = (), patch: str | Iterable[str] = ()) -> None:
        """Scripted faults for one image name: ``post`` for its creates, ``get`` for its
        look-ups (listings filtered by ``name=``), ``patch`` for its updates, each consumed
        in order, e.g. ``sb.script("web", post=["commit:502"], get="503,ok")``. Steps:
        ``faults.STEPS``."""
        self._app.script(name, post=post, get=get, patch=patch)

    @contextlib.contextmanager
    def holding_creates(self) -> Iterator[threading.Event]:
        """Within the block, creates arriving wait unanswered and uncommitted (as if the
        server were still at work on them) until the event yielded is set; creates arriving
        after the block go through. The event is set at the latest when the sandbox stops."""
        hold = threading.Event()
        self._holds.append(hold)
        self._app.hold_creates(hold)
        try:
            yield hold
        finally:
            self._app.hold_creates(None)

    @property
    def scripted_left(self) -> int:
        """Scripted fault steps not consumed yet (0: every scripted fault happened)."""
        return self._app.scripted_left()

    @property
    def request_count(self) -> Counter[tuple[str, str]]:
        """Requests per ``(method, kind)``; kind is root, tokens, images, image, schema,
        os_versions or other."""
        return self._app.counts()

    @property
    def capacity_counts(self) -> tuple[int, int]:
        """(most image requests served at once, in every mode; requests refused with 503 in
        capacity mode)."""
        return self._app.capacity_counts()

    def capacity_load(self, method: str) -> Load:
        """Capacity mode: what the requests of one method met (``peak`` and ``refused`` as
        above; ``opening``: the most in flight before the first was answered)."""
        return self._app.capacity_load(method)

    @property
    def connections(self) -> int:
        """Connections being served now. 0 once a client has gone: every request it sent
        has been served (whatever it commits is committed), or was lost with it."""
        return self._server.open_connections() if self._server else 0

    @property
    def post_count(self) -> int:
        """``POST /v2/images`` requests received, answered or not."""
        return self._app.counts()[("POST", "images")]


def _copy(image: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in image.items()}


def serve(config: SandboxConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until KeyboardInterrupt or SIGTERM; call ``on_ready(url)`` once listening."""
    stop = threading.Event()
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        sandbox = Sandbox(config).start()
    except OSError as exc:  # a busy port, an address not on this machine, no permission
        raise ConfigError(f"cannot listen on {config.host} port {config.port}: "
                          f"{exc.strerror or exc}; choose another --port, or --port 0 for a "
                          "free one") from None
    if in_main:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        on_ready(sandbox.url)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if in_main and previous is not None:  # None: the old handler was not set from Python
            signal.signal(signal.SIGTERM, previous)
