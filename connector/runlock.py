"""One run at a time per ledger: an OS file lock beside a SQLite ledger, a session advisory lock on
PostgreSQL. Both die with the process, so a crashed run never blocks the next one."""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

import filelock
import sqlalchemy as sa

from connector import private
from connector.ledger.repo import Ledger


class AlreadyRunning(RuntimeError):
    """Another run holds the lock of this ledger."""


@contextlib.contextmanager
def run_lock(ledger: Ledger, state_dir: Path, instance: str = "dmp-connector"):
    """One run at a time per instance name (several named instances may share a PostgreSQL ledger)."""
    if ledger.is_postgresql:
        conn = ledger.engine.connect()
        try:
            # Advisory locks are database-wide: the ledger's schema is part of the key, so that two ledgers
            # in two schemas of one database (two structures, two test runs) never lock each other out.
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
            key = zlib.crc32(f"dmp-connector run {schema} {instance}".encode()) & 0x7FFFFFFF
            if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                raise AlreadyRunning(f"another run of instance {instance} holds its lock (PostgreSQL advisory lock)"
                                     f"{_holder(ledger)}")
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        finally:
            conn.close()
        return
    path = _sqlite_lock_path(ledger, state_dir)
    private.make_dirs(path.parent)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise AlreadyRunning(f"another dmp-connector run holds the lock {path}{_holder(ledger)}") from None
    try:
        yield
    finally:
        lock.release()


def _sqlite_lock_path(ledger: Ledger, state_dir: Path) -> Path:
    database = ledger.engine.url.database
    if database and database != ":memory:":
        return Path(database).with_suffix(".run.lock")
    return state_dir / "run.lock"


def _holder(ledger: Ledger) -> str:
    """Who holds the lock, as the ledger's runs say: the latest run still running (its pid, host, start)."""
    from connector.ledger.schema import runs

    try:
        with ledger.engine.connect() as conn:
            r = conn.execute(sa.select(runs.c.id, runs.c.mode, runs.c.pid, runs.c.host, runs.c.started_at)
                             .where(runs.c.status == "running").order_by(runs.c.id.desc()).limit(1)).first()
    except sa.exc.SQLAlchemyError:
        return ""
    if r is None:  # it holds the lock but has not recorded its run yet (or is a replay requeuing)
        return ""
    return f": {r.mode} #{r.id}, pid {r.pid} on {r.host}, started {r.started_at:%Y-%m-%d %H:%M:%S} UTC"
