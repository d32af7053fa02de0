"""A hostile DMP for the client's tests: a real HTTPS server in a thread (client certificate required, test
PKI) whose every misbehaviour is chosen by the test, per endpoint (`…/repository`, `…/registry`):

- any status, Content-Type, body and extra headers (a redirect's Location, a wrong content type, malformed MTOM);
- `close_without_reply`: read the request, hang up;
- `delay`: wait before answering (past the client's read timeout);
- `trickle`: send the body one byte at a time, `trickle` seconds apart (each byte well within the read timeout);
- `body_size`: stream a body of that many bytes, never held in memory (announced in Content-Length, unless
  `announce_length` is false: then the body runs until the server closes the connection).

`bytes_sent` counts the body bytes that left, `requests` what arrived: (path, headers, body, TLS version), and
`connections` the client address and port each request came from (HTTP/1.1: a pooled connection is seen).
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field

from connector.trust import pki


@dataclass
class Behaviour:
    status: int = 200
    content_type: str | None = "application/soap+xml; charset=UTF-8"
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    close_without_reply: bool = False
    delay: float = 0.0
    trickle: float | None = None
    body_size: int | None = None
    announce_length: bool = True
    requests: list = field(default_factory=list)
    connections: list = field(default_factory=list)  # the client's (address, port) of each request, in order
    bytes_sent: int = 0


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.behaviour = Behaviour()  # for every path without its own entry in `paths`
        self.paths: dict[str, Behaviour] = {}  # last path segment ("repository", "registry") -> its behaviour
        self.stopping = threading.Event()

    def handle_error(self, request, client_address):
        pass  # handshake failures and clients hanging up are the point of several tests; the client side asserts them

    def for_path(self, path: str) -> Behaviour:
        return self.paths.get(path.rstrip("/").rsplit("/", 1)[-1], self.behaviour)

    @property
    def url(self) -> str:
        """The DMP base URL (`dmp.base_url`)."""
        return f"https://127.0.0.1:{self.server_port}/si-dmp-server/v2/services"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # as the DMP: persistent connections (HTTP/1.0 closed each one after its reply)

    def log_message(self, *args):
        pass

    def do_POST(self):
        b = self.server.for_path(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        b.requests.append((self.path, dict(self.headers), body, self.connection.version()))
        b.connections.append(self.client_address)
        if b.close_without_reply:
            self.close_connection = True
            return
        if b.delay:
            self.server.stopping.wait(b.delay)
        self.send_response(b.status)
        if b.content_type is not None:
            self.send_header("Content-Type", b.content_type)
        for name, value in b.headers.items():
            self.send_header(name, value)
        if b.announce_length:
            self.send_header("Content-Length", str(b.body_size if b.body_size is not None else len(b.body)))
        else:
            self.close_connection = True
        self.end_headers()
        try:
            if b.body_size is not None:
                self._stream(b, b.body_size)
            elif b.trickle is not None:
                for i in range(len(b.body)):
                    if self.server.stopping.wait(b.trickle):
                        break
                    self._write(b, b.body[i:i + 1])
            else:
                self._write(b, b.body)
        except OSError:  # the client hung up: that is what the client is expected to do
            self.close_connection = True

    def _stream(self, b: Behaviour, size: int) -> None:
        chunk = b"x" * 65536
        while size > 0 and not self.server.stopping.is_set():
            n = min(size, len(chunk))
            self._write(b, chunk[:n])
            size -= n

    def _write(self, b: Behaviour, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        b.bytes_sent += len(data)


def server_context(files: pki.PkiFiles, *, max_version=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if max_version:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 on purpose
            ctx.minimum_version = ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(files.server_cert, files.server_key, files.server_password_file.read_bytes().strip())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(files.client_ca))
    return ctx


@contextlib.contextmanager
def running_server(ctx: ssl.SSLContext):
    server = Server(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition()` until true, at most `timeout` seconds (a bound, not a synchronisation by sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still false after {timeout:g} s")
        time.sleep(0.02)
