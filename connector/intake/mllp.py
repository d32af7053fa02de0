"""`dmp-connector intake hl7`: the MLLP listener. Each message is parsed, committed to the store, then
acknowledged: MSA-1 AA only once its rows are committed (durable before ack), AE/AR with an ERR segment when it
is refused (nothing written).

MLLP framing (<VT> message <FS><CR>) is done here on asyncio streams rather than with python-hl7's
MLLPStreamReader: on a block over its limit that reader clears its buffer and goes on reading the rest of the
oversized message as if it were new blocks, it decodes every message with one character set fixed per
connection (MSH-18 says it per message) and it has no timeout for a sender that stops mid-message.

Bounds: at most `max_connections` connections (more are closed at once, with a WARNING), each buffering at most
`max_message_bytes` (a bigger message is refused and its connection closed), so memory stays under about
max_connections × max_message_bytes; `workers` threads parse and write (the event loop only moves bytes); a
connection idle for `idle_timeout` or stalled mid-message for `read_timeout` is closed. No error of one
connection or message stops the listener.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from connector import testhooks
from connector.intake import message as hl7msg
from connector.intake.figures import ACCEPTED, RESEND, Recorder
from connector.intake.writer import Writer

log = logging.getLogger("connector.intake")

START, END = b"\x0b", b"\x1c\r"


@dataclass
class Figures:
    """What the listener did since it started (logged at stop; item 6 of issue 19 will publish them)."""

    accepted: int = 0
    duplicates: int = 0
    refused: dict = field(default_factory=dict)  # "AE 204" -> count
    connections_refused: int = 0


class Listener:
    def __init__(self, intake_settings, writer: Writer, max_document_bytes: int):
        self.settings = intake_settings
        self.writer = writer
        self.max_document_bytes = max_document_bytes
        self.pool = ThreadPoolExecutor(max_workers=intake_settings.workers, thread_name_prefix="intake")
        self.figures = Figures()
        self.recorder: Recorder | None = None  # the figures written to the store for `status` (once started)
        self._ticker: asyncio.Task | None = None
        self._connections = 0
        self._control = 0
        self.server: asyncio.base_events.Server | None = None

    # --- serving ---------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the address actually bound (port 0 picks a free one)."""
        s = self.settings
        self.server = await asyncio.start_server(self._connection, s.host, s.port, ssl=self._tls(),
                                                 ssl_handshake_timeout=s.read_timeout if s.tls_certificate else None,
                                                 limit=64 * 1024)
        address = self.server.sockets[0].getsockname()
        self.recorder = Recorder(self.writer.engine, f"{socket.gethostname()}:{address[1]}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self.recorder.start)
        self._ticker = asyncio.create_task(self._tick())
        log.info("intake hl7: listening on %s:%s%s", address[0], address[1], " (TLS)" if s.tls_certificate else "")
        return address[0], address[1]

    async def _tick(self) -> None:
        """Write the figures and the heartbeat every intake.hl7.figures_interval_seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.figures_interval)
            await loop.run_in_executor(self.pool, self.recorder.flush)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self._ticker is not None:
            self._ticker.cancel()
        self.pool.shutdown(wait=True)  # what is being written is committed and acknowledged first
        if self.recorder is not None:
            self.recorder.flush(stopping=True)
        f = self.figures
        log.info("intake hl7: stopped; %d accepted, %d resends, refused %s, %d connections over the limit",
                 f.accepted, f.duplicates, dict(sorted(f.refused.items())) or "none", f.connections_refused)

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls_certificate:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(s.tls_certificate, s.tls_key)
        if s.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(s.tls_client_ca)
        return context

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if self._connections >= self.settings.max_connections:
            self.figures.connections_refused += 1
            log.warning("intake hl7: connection from %s closed: intake.hl7.max_connections (%d) reached", peer,
                        self.settings.max_connections)
            writer.close()
            return
        self._connections += 1
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError) as exc:
            log.warning("intake hl7: connection from %s lost: %s", peer, type(exc).__name__)
        except Exception:  # a defect of ours: this connection ends, the listener goes on
            log.exception("intake hl7: connection from %s ended by an internal error", peer)
        finally:
            self._connections -= 1
            writer.close()

    async def _serve(self, reader, writer, peer: str) -> None:
        s = self.settings
        buffer = bytearray()
        while True:
            # between messages: separators a sender may add (CR, LF), then <VT>
            while True:
                buffer[:] = buffer.lstrip(b"\r\n")
                if buffer:
                    break
                chunk = await _read(reader, s.idle_timeout)
                if chunk is None:
                    log.info("intake hl7: connection from %s closed after %.0f s idle", peer, s.idle_timeout)
                    return
                if not chunk:
                    return  # the sender closed it
                buffer += chunk
            if buffer[:1] != START:
                log.warning("intake hl7: connection from %s closed: bytes outside an MLLP block (no <VT>)", peer)
                return
            scanned = 1
            while (end := _find_end(buffer, scanned)) < 0:
                scanned = max(1, len(buffer) - 1)
                if len(buffer) > s.max_message_bytes + 1:
                    await self._refuse_oversized(writer, bytes(buffer[1:4096]), peer)
                    return
                chunk = await _read(reader, s.read_timeout)
                if chunk is None or not chunk:
                    log.warning("intake hl7: connection from %s closed: %s in the middle of a message", peer,
                                "stalled" if chunk is None else "closed by the sender")
                    return
                buffer += chunk
            with memoryview(buffer) as view:
                block = bytes(view[1:end])  # one copy (a slice of the bytearray, then bytes, made two)
            del buffer[:end + len(END)]
            if len(block) > s.max_message_bytes:
                await self._refuse_oversized(writer, block[:4096], peer)
                return
            reply = await asyncio.get_running_loop().run_in_executor(self.pool, self.handle, block, peer)
            del block
            writer.write(START + reply + END)
            await asyncio.wait_for(writer.drain(), s.read_timeout)

    async def _refuse_oversized(self, writer, head: bytes, peer: str) -> None:
        """AE for a message over the cap (its header, if readable, names it), then the connection is closed: the
        rest of that message cannot be told from the next one."""
        refused = hl7msg.Refused(f"message over intake.hl7.max_message_bytes ({self.settings.max_message_bytes})",
                                 "", "207")
        try:
            header = hl7msg.read_header(head)
        except hl7msg.Refused:
            header = None
        self._count_refused(refused, header, peer)
        writer.write(START + hl7msg.ack(header, "AE", refused, self._next_id()) + END)
        try:
            await asyncio.wait_for(writer.drain(), self.settings.read_timeout)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    # --- one message (a worker thread) -----------------------------------------------------------

    def handle(self, block: bytes, peer: str = "-") -> bytes:
        """The ACK of one message, after committing it (AA) or refusing it (AE/AR); never raises."""
        started = time.monotonic()
        header = None
        try:
            header = hl7msg.read_header(block)
            intake = hl7msg.read(block, self.max_document_bytes)
            written = self.writer.write(intake)
            testhooks.point("intake_after_commit")
        except hl7msg.Refused as refused:
            self._count_refused(refused, header, peer, started)
            return hl7msg.ack(header, refused.ack_code, refused, self._next_id())
        except Exception:
            log.exception("intake hl7: message %s from %s: internal error, refused AR",
                          _id(header), header.sender if header else peer)
            refused = hl7msg.Refused("internal error of the connector: resend later", "", "207", "AR")
            self._count_refused(refused, header, peer, started)
            return hl7msg.ack(header, "AR", refused, self._next_id())
        if written.duplicate:
            self.figures.duplicates += 1
        else:
            self.figures.accepted += 1
        self._record(RESEND if written.duplicate else ACCEPTED, started)
        log.info("intake hl7: message %s from %s: %s of document %s version %d %s (%.0f ms)", _id(header),
                 header.sender, intake.action, written.document_id, written.version,
                 "already recorded (a resend)" if written.duplicate else "committed",
                 (time.monotonic() - started) * 1000)
        for warning in intake.warnings:
            log.warning("intake hl7: message %s: %s", _id(header), warning)
        return hl7msg.ack(header, "AA", None, self._next_id())

    def _count_refused(self, refused: hl7msg.Refused, header, peer: str, started: float | None = None) -> None:
        key = f"{refused.ack_code} {refused.code}"
        self.figures.refused[key] = self.figures.refused.get(key, 0) + 1
        self._record(key, started)
        log.warning("intake hl7: message %s from %s refused %s (ERR %s %s): %s", _id(header),
                    header.sender if header else peer, refused.ack_code, refused.code, refused.location or "-",
                    refused.text)

    def _record(self, outcome: str, started: float | None) -> None:
        if self.recorder is not None:
            self.recorder.count(outcome, 0.0 if started is None else (time.monotonic() - started) * 1000)

    def _next_id(self) -> str:
        self._control += 1
        return f"DMPC{time.strftime('%Y%m%d%H%M%S')}{self._control:06d}"


def _find_end(buffer: bytearray, start: int) -> int:
    """Where <FS><CR> starts in `buffer` from `start`, -1 if not (yet) there. <FS> is looked for alone: a one-byte
    find is memchr (0.01 ms over a 1.4 MB message), a two-byte one walks it byte by byte (1 ms)."""
    while (at := buffer.find(END[:1], start)) >= 0:
        if buffer[at + 1:at + 2] == END[1:]:
            return at
        if at + 1 == len(buffer):
            return -1  # <FS> last: its <CR> may come with the next bytes
        start = at + 1
    return -1


async def _read(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """The next bytes (b'' at end of stream), None when nothing came within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(256 * 1024), timeout)
    except asyncio.TimeoutError:
        return None


def _peer(writer) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _id(header) -> str:
    """MSH-10 as shown in logs (escaped, cut): a control id, never patient data."""
    from connector.printable import printable

    return printable(header.control_id, 64) if header is not None and header.control_id else "(no MSH-10)"


def serve_forever(intake_settings, store_url: str, max_document_bytes: int) -> None:
    """Run the listener until SIGTERM or SIGINT; in-flight messages are committed and acknowledged first."""
    writer = Writer(store_url)
    writer.create_tables()
    listener = Listener(intake_settings, writer, max_document_bytes)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await listener.start()
        await stop.wait()
        log.info("intake hl7: stopping")
        await listener.stop()

    asyncio.run(main())
