"""`replay`, `hold`, `release`: an operator's hands on the queue (Postfix `postsuper -r/-h/-H`).

Replay requeues the matching documents, then runs: a document that failed inside a submission set is resent
within that same submission set (same ids: the DMP cannot get it twice); a document that failed before any
submission (invalid CDA, …) is evaluated afresh by the rules.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from connector.ledger.repo import Ledger, utcnow
from connector.ledger.schema import DEFERRED, FAILED, PENDING, SKIPPED, documents, submissions


@dataclass(frozen=True)
class Filters:
    failed: bool = True
    reason: str | None = None
    site: str | None = None
    since: dt.datetime | None = None
    run_id: int | None = None
    document_id: str | None = None


def matching(ledger: Ledger, f: Filters) -> list[dict]:
    d = documents
    query = sa.select(d.c.document_id, d.c.version, d.c.state, d.c.reason, d.c.submission_id, d.c.finess_geo)
    if f.failed:
        query = query.where(d.c.state == FAILED)
    else:
        query = query.where(d.c.state.in_([FAILED, DEFERRED, SKIPPED]))
    if f.reason:
        query = query.where(d.c.reason == f.reason)
    if f.site:
        query = query.where(d.c.finess_geo == f.site)
    if f.since:
        query = query.where(d.c.updated_at >= f.since)
    if f.run_id is not None:
        query = query.where(d.c.last_run_id == f.run_id)
    if f.document_id:
        query = query.where(d.c.document_id == f.document_id)
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(d.c.document_id, d.c.version))]


def requeue(ledger: Ledger, rows: list[dict]) -> None:
    """Make the documents due now: their submission set (if any) DEFERRED and due, the others PENDING."""
    now = utcnow()
    d, s = documents, submissions
    with ledger.engine.begin() as conn:
        for sub_id in sorted({r["submission_id"] for r in rows if r["submission_id"] is not None}):
            conn.execute(sa.update(s).where(s.c.id == sub_id).values(state=DEFERRED, updated_at=now))
            conn.execute(sa.update(d).where(d.c.submission_id == sub_id, d.c.state.in_([FAILED, DEFERRED])).values(
                state=DEFERRED, next_attempt_at=now, first_attempt_at=now, updated_at=now))
        for r in rows:
            if r["submission_id"] is None:
                conn.execute(sa.update(d).where(d.c.document_id == r["document_id"], d.c.version == r["version"]).values(
                    state=PENDING, reason=None, detail=None, updated_at=now))


def states_of(ledger: Ledger, keys: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str | None]]:
    states = ledger.states(keys)
    return {k: (states[k].state, states[k].reason) for k in keys if k in states}
