"""Crash points for the delivery tests: with DMP_CONNECTOR_CRASH_AT="<point>[:<n>]" the process kills itself
(SIGKILL, no cleanup) the n-th time it reaches <point>. Unset (always, in production), `point` does nothing."""

import os
import signal
import threading

POINTS = ("after_journal", "before_send", "after_send", "before_settle", "after_settle")
# Also "migration_step": after each step of a ledger migration (connector/ledger/migrations/env.py), and
# "intake_after_commit": after `intake hl7` committed a message, before its ACK (connector/intake/mllp.py);
# "intake_folder_after_commit": after `intake folder` committed a file, before moving it (connector/intake/folder.py).

_spec = os.environ.get("DMP_CONNECTOR_CRASH_AT", "")
_target, _, _nth = _spec.partition(":")
_count = 0
_lock = threading.Lock()


def point(name: str) -> None:
    global _count
    if name != _target:
        return
    with _lock:
        _count += 1
        if _count >= int(_nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
