"""The ANS schematron in a process of its own, beside a run's main thread.

Saxon holds the GIL while it transforms, so in the run's own process every schematron check stalls the main
thread that builds, signs and journals the documents: with every CDA checked, a run used one core of two.
Here the checks run on the other core while the main thread goes on with the next patients (bench/README.md).
The process compiles the stylesheet once, as it starts; the parent sends it each CDA without its base64 body
(a few kilobytes) and gets the error strings back. If the process dies, checks go on in the caller's process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from lxml import etree

from connector.payload import validate

log = logging.getLogger("connector.validate")


class SchematronProcess:
    def __init__(self) -> None:
        self._broken = False
        try:  # spawn, not fork: the parent runs threads (senders) and a fork would copy their locks mid-use
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                             initargs=(os.getpid(),))
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


def _start(parent: int) -> None:
    """In the child: the parent decides when it ends (its pool's shutdown), not a signal sent to the group; and
    it ends with the parent, however the parent ends."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    validate.warm_up()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """A run killed with SIGKILL (or the OOM killer) left this process alive, a child of init, holding its
    stylesheet (~225 MB), and multiprocessing's resource tracker with it (it ends when the last process holding its
    pipe does). Linux: the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG; the parent's thread
    that started us, here the run's own, lives as long as the pool). Elsewhere: a thread watching the parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):  # not Linux
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the kernel was told
        os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _errors_of(text: bytes) -> list[str]:
    return validate.schematron_errors(validate.parse_untrusted(text))
