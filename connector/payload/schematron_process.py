"""The ANS schematron in a process of its own, beside a run's main thread.

Saxon holds the GIL while it transforms, so in the run's own process every schematron check stalls the main
thread that builds, signs and journals the documents: with every CDA checked, a run used one core of two.
Here the checks run on the other core while the main thread goes on with the next patients (bench/README.md).
The process compiles the stylesheet once, as it starts; the parent sends it each CDA without its base64 body
(a few kilobytes) and gets the error strings back. If the process dies, checks go on in the caller's process.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from lxml import etree

from connector.payload import validate

log = logging.getLogger("connector.validate")


class SchematronProcess:
    def __init__(self) -> None:
        self._broken = False
        try:  # spawn, not fork: the parent runs threads (senders) and a fork would copy their locks mid-use
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start)
        except (OSError, NotImplementedError) as exc:  # no POSIX semaphores (a sandbox without /dev/shm)…
            log.warning("no schematron process (%s); checking CDAs in the run's own process", type(exc).__name__)
            self._pool, self._broken = None, True

    def submit(self, tree: etree._ElementTree) -> "Pending":
        """Start checking a parsed CDA (body already shrunk); `Pending.result()` gives its errors."""
        future = None
        if not self._broken:
            try:
                future = self._pool.submit(_errors_of, etree.tostring(tree))
            except (BrokenProcessPool, RuntimeError):
                self._fall_back()
        return Pending(self, future, tree)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "SchematronProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fall_back(self) -> None:
        if not self._broken:
            log.warning("the schematron process ended unexpectedly; checking CDAs in the run's own process")
        self._broken = True


class Pending:
    def __init__(self, owner: SchematronProcess, future: Future | None, tree: etree._ElementTree):
        self._owner, self._future, self._tree = owner, future, tree

    def result(self) -> list[str]:
        if self._future is not None:
            try:
                return self._future.result()
            except BrokenProcessPool:
                self._owner._fall_back()
        return validate.schematron_errors(self._tree)


def _start() -> None:
    """In the child: the parent decides when it ends (its pool's shutdown), not a signal sent to the group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    validate.warm_up()


def _errors_of(text: bytes) -> list[str]:
    return validate.schematron_errors(validate.parse_untrusted(text))
