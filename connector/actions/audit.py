"""The audit trail of DMP transactions (EXI 16): export for a period, and purge past the retention.

The `audit` table is append-only (connector/deliver.py writes one row per ITI-41 and ITI-18 call); the only
deletion is this retention purge, run at the start of each run. Exports stream: the table is never loaded whole.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
from typing import IO, Iterator

import sqlalchemy as sa

from connector.ledger.repo import Ledger, utcnow
from connector.ledger.schema import audit

log = logging.getLogger("connector.audit")

COLUMNS = tuple(c.name for c in audit.columns)  # id, at, run_id, action, finess_geo, rpps, submission_set_uid, …
FORMATS = ("csv", "json")


def parse_when(text: str, *, end: bool = False) -> dt.datetime:
    """`2026-11-20` (a whole day: its start, or with end=True the next day's start) or an ISO date-time (UTC)."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def entries(ledger: Ledger, since: dt.datetime | None = None, until: dt.datetime | None = None) -> Iterator[dict]:
    """Audit rows with since <= at < until, oldest first (read through the ix_audit_at index, in a stream)."""
    query = sa.select(audit).order_by(audit.c.at, audit.c.id)
    if since:
        query = query.where(audit.c.at >= since)
    if until:
        query = query.where(audit.c.at < until)
    with ledger.engine.connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query):
            yield dict(row._mapping)


def _text(value):
    """Times are UTC in the ledger: written with their zone (2026-11-20 09:00:00+00:00)."""
    return value.replace(tzinfo=dt.UTC).isoformat(sep=" ") if isinstance(value, dt.datetime) else value


def write_csv(rows, out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for n, row in enumerate(rows, 1):
        writer.writerow(["" if row[c] is None else _text(row[c]) for c in COLUMNS])
    return n


def write_json(rows, out: IO[str]) -> int:
    """A JSON array, written element by element."""
    out.write("[")
    n = 0
    for n, row in enumerate(rows, 1):
        out.write(("\n" if n == 1 else ",\n") + json.dumps({c: _text(row[c]) for c in COLUMNS}, ensure_ascii=False))
    out.write("\n]\n" if n else "]\n")
    return n


def export(ledger: Ledger, out: IO[str], *, fmt: str = "csv", since: dt.datetime | None = None,
           until: dt.datetime | None = None) -> int:
    """Write the entries of [since, until) to `out`; returns how many."""
    return (write_csv if fmt == "csv" else write_json)(entries(ledger, since, until), out)


def purge(ledger: Ledger, retention_days: int, now: dt.datetime | None = None) -> int:
    """Delete the entries older than the retention (EXI 16: at least 6 months are kept); returns how many."""
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    with ledger.engine.begin() as conn:
        deleted = conn.execute(sa.delete(audit).where(audit.c.at < cutoff)).rowcount
    if deleted:
        log.info("audit trail: %d entries older than %d days purged", deleted, retention_days)
    return deleted
