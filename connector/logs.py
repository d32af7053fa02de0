"""Logging: readable lines on a terminal, JSON lines for journald/ELK. Log records carry internal ids only
(document ids, IPPs, submission uids), never an INS, a name, a birth date or document content."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from connector.printable import printable


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        entry.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Fields a log record may carry (`extra=`), written as JSON fields: `jq 'select(.outcome == "transient")'`.
FIELDS = ("run_id", "submission", "outcome", "error_code", "state")

# syslog priorities of the levels: under journald, a "<N>" prefix on each line sets the entry's priority, so that
# `journalctl -p warning` shows the connector's warnings and errors (sd-daemon(3)).
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: every line of a record (a traceback's too) starts with its syslog priority."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITIES.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=device:inode of the journal stream it connected to stdout/stderr."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in the message (from a store value, say: an ESC sequence can
    clear an operator's screen, a newline forge a log line) are escaped; a traceback follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


QUIET_LIBRARIES = ("urllib3", "zeep", "signxml", "xmlschema", "alembic", "apscheduler.executors", "filelock",
                   "pikepdf")  # pikepdf >= 10 logs its logger bridge at INFO on first use: noise in a dry run's JSON


def setup(level: str = "INFO", json_lines: bool = False) -> None:
    handler = BarAwareHandler(sys.stderr)
    formatter = JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JournalPrefix(formatter) if _stderr_is_journal() else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries whose DEBUG lines carry whole messages (signxml logs the canonicalized VIHF, whose resource-id
    # is the patient's INS; zeep and urllib3 log SOAP bodies): never below WARNING, even with --log-level DEBUG.
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class StopRequested(Exception):
    """Raised by a progress callback when the operator asked to stop (SIGTERM): the run takes no new patient;
    the submissions already handed to the senders finish, anything else is settled by the next run."""


class RunProgress:
    """Progress of a run, called by it per patient group and per settled submission: on a terminal a progress bar
    (documents decided of the store's total, rate, ETA) redrawn in place, with log lines printed above it; off a
    terminal a log line with the same figures every `interval` seconds (journald, cron mail)."""

    def __init__(self, *, tty: bool | None = None, interval: float = 30.0, stop=None, stream=None,
                 clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if not self.tty else 0.5
        self.stop = stop  # a threading.Event, set by the daemon's signal handler
        self.clock = clock
        self.patients = 0
        self.documents = 0  # documents decided so far
        self.total: int | None = None  # documents in the store (a count query at the start of the run)
        self._start = self._last = clock()
        self._lock = threading.Lock()
        self._shown = ""

    def begin(self, total: int | None) -> None:
        self.total = total
        if self.tty:
            _BAR_STREAMS[id(self.stream)] = self

    def patient(self, summary) -> None:
        if self.stop is not None and self.stop.is_set():
            raise StopRequested("stop requested: no new patient is taken")
        with self._lock:
            self.patients += 1
        self._tick(summary)

    def scanned(self, n: int) -> None:
        with self._lock:
            self.documents += n

    def settled(self, summary) -> None:
        self._tick(summary)

    def close(self, summary) -> None:
        _BAR_STREAMS.pop(id(self.stream), None)
        if self.tty:
            self.stream.write("\r\033[K")  # the summary follows on a clean line
            self.stream.flush()

    def figures(self) -> str:
        """done/total (percent), rate, ETA: what both the bar and the log line say."""
        elapsed = max(self.clock() - self._start, 1e-9)
        rate = self.documents / elapsed
        if not self.total:
            return f"{self.documents} documents, {rate:.1f}/s"
        done = min(self.documents, self.total)
        left = self.total - done
        eta = _duration(left / rate) if rate > 0 else "?"
        return f"{done}/{self.total} documents ({done * 100 // self.total}%), {rate:.1f}/s, ETA {eta}"

    def line(self, summary) -> str:
        c = summary.counts
        return (f"run {summary.run_id}: {self.figures()}; {self.patients} patients, {c['fed']} fed, "
                f"{c['deferred']} deferred, {c['failed']} failed, {sum(summary.skipped.values())} skipped")

    def bar(self, summary, width: int = 24) -> str:
        filled = width * min(self.documents, self.total) // self.total if self.total else 0
        c = summary.counts
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.figures()} | {c['fed']} fed, {c['deferred']} deferred, "
                f"{c['failed']} failed")

    def redraw(self) -> None:
        """Put the bar back under a log line just printed (called by the log handler)."""
        if self._shown:
            self.stream.write(self._shown)
            self.stream.flush()

    def _tick(self, summary) -> None:
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval:
                return
            self._last = now
        if self.tty:  # the bar stays on the last line; log lines are printed above it (BarAwareHandler)
            with self._lock:
                self._shown = f"\r\033[K{self.bar(summary)}"
                self.stream.write(self._shown)
                self.stream.flush()
        else:
            logging.getLogger("connector.run").info("%s", self.line(summary))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


_BAR_STREAMS: dict[int, RunProgress] = {}  # streams a progress bar is drawn on, by id


class BarAwareHandler(logging.StreamHandler):
    """Clears a progress bar drawn on its stream before a log line, and draws it again after: the log lines
    scroll above the bar instead of overwriting it."""

    def emit(self, record: logging.LogRecord) -> None:
        bar = _BAR_STREAMS.get(id(self.stream))
        if bar is None:
            return super().emit(record)
        with bar._lock:
            self.stream.write("\r\033[K")
            super().emit(record)
            bar.redraw()
