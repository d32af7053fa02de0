"""Every HTTP exchange with the DMP is bounded: a total deadline, a reply size cap, no redirect followed.

requests' timeouts bound each socket operation, not the exchange: a server trickling one byte a second kept a
submission 87 s with read_timeout = 5, and a reply was read whole into memory (2.5 GB took 7 GB). Here:
- a watchdog thread shuts the exchange's socket down when `dmp.request_deadline` passes, whatever the exchange
  is blocked on (the TLS handshake, sending, waiting for the headers, reading the body): DeadlineExceeded;
- the reply is read in chunks, and refused past `dmp.max_reply_bytes` (or when announced bigger): ReplyTooLarge;
- a redirect is never followed (a 307 would POST the CDAs and the VIHF again, to another host): RedirectRefused.
The adapter holds these rules, so every caller of the DMP session (ITI-41, zeep's ITI-18) is bound by them.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from connector.config import DmpSettings

_CHUNK = 64 * 1024


class DeadlineExceeded(requests.exceptions.Timeout):
    """No complete reply within the request deadline (the request may have been processed)."""


class ReplyTooLarge(requests.RequestException):
    """The reply is bigger than the cap (the request may have been processed)."""


class RedirectRefused(requests.RequestException):
    """The server answered with a redirect; DMP calls never follow one."""

    def __init__(self, status: int, location: str | None, **kwargs):
        super().__init__(f"HTTP {status} redirect to {location or '(no Location)'}", **kwargs)
        self.status, self.location = status, location


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter whose every exchange ends by `deadline` seconds, reads at most `max_reply_bytes` of reply
    and refuses redirects."""

    def __init__(self, *, deadline: float = DmpSettings.request_deadline,
                 max_reply_bytes: int = DmpSettings.max_reply_bytes, **kwargs):
        self.deadline, self.max_reply_bytes = deadline, max_reply_bytes
        super().__init__(**kwargs)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "https": _WatchedPool}

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _WatchedPool}
        return manager

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        exchange = _Exchange(self.deadline)
        _current.exchange = exchange
        try:
            response = super().send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
            try:
                if 300 <= response.status_code < 400:
                    raise RedirectRefused(response.status_code, response.headers.get("Location"),
                                          request=request, response=response)
                response._content = self._read(response)
                response._content_consumed = True
            except BaseException:
                response.close()  # a reply left half-read: its connection is not reused
                raise
            return response
        except requests.RequestException:
            if exchange.expired:
                raise DeadlineExceeded(f"no complete reply within {self.deadline:g} s (dmp.request_deadline)",
                                       request=request) from None
            raise
        finally:
            _current.exchange = None
            exchange.finish()

    def _read(self, response: requests.Response) -> bytes:
        cap = self.max_reply_bytes
        announced = response.headers.get("Content-Length", "")
        if announced.strip().isdigit() and int(announced) > cap:
            raise ReplyTooLarge(f"reply of {int(announced)} bytes announced, more than {cap} (dmp.max_reply_bytes)")
        chunks, size = [], 0
        try:
            # Undecoded: we ask for no content coding (mtls_session); a compressed reply is unreadable, not a bomb.
            for chunk in response.raw.stream(_CHUNK, decode_content=False):
                size += len(chunk)
                if size > cap:
                    raise ReplyTooLarge(f"reply longer than {cap} bytes (dmp.max_reply_bytes)")
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, requests.RequestException):
                raise
            # A string, not the exception: the request was sent, whatever the transport error wraps (ssl…).
            raise requests.exceptions.ChunkedEncodingError(f"reply cut short: {type(exc).__name__}: {exc}") from None
        return b"".join(chunks)


# --- the watchdog --------------------------------------------------------------------------------

_current = threading.local()  # the exchange running in this thread (requests does all its I/O in the caller's)


class _Exchange:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.expired = self.done = False
        self._handle: socket.socket | None = None
        self._lock = threading.Lock()
        _watchdog.watch(self)

    def attach(self, sock) -> None:
        """The socket the exchange is using now (a new connection's, or a pooled one's). The watchdog keeps a
        duplicate of its descriptor: shutting that down ends the connection, and while it is open the number
        cannot be reused by another connection (ssl detaches the plain socket it wraps before its handshake)."""
        try:
            handle = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        except OSError:
            return  # already closed
        with self._lock:
            self._close_handle()
            self._handle = handle
            if self.expired:
                _shut_down(handle)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            if self._handle is not None:
                _shut_down(self._handle)

    def finish(self) -> None:
        _watchdog.forget(self)  # first: the watchdog holds its own lock while it expires an exchange
        with self._lock:
            self.done = True
            self._close_handle()

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _shut_down(handle: socket.socket) -> None:
    """Wake whatever blocks on the connection (recv, send, the TLS handshake): the exchange fails at once."""
    try:
        handle.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more


class _Watchdog:
    """One thread for the whole process, waking at the earliest deadline of the exchanges in progress (at most
    max_in_flight of them, plus a lookup)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active: set[_Exchange] = set()
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange) -> None:
        with self._cond:
            self._active.add(exchange)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dmp-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, exchange: _Exchange) -> None:
        with self._cond:
            self._active.discard(exchange)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for exchange in [e for e in self._active if e.deadline <= now]:
                    self._active.discard(exchange)
                    exchange.expire()
                earliest = min((e.deadline for e in self._active), default=None)
                self._cond.wait(None if earliest is None else earliest - now)


_watchdog = _Watchdog()


class _WatchedConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _attach(sock)  # before the TLS handshake
        return sock

    def request(self, *args, **kwargs) -> None:
        _attach(self.sock)  # a pooled connection: its TLS socket
        return super().request(*args, **kwargs)


def _attach(sock) -> None:
    exchange = getattr(_current, "exchange", None)
    if exchange is not None and isinstance(sock, socket.socket):
        exchange.attach(sock)


class _WatchedPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedConnection
