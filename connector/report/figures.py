"""What the ledger says, as aggregates: every query is a GROUP BY or a LIMITed list over an index, so the
report costs the same on a ledger of a thousand or a million documents.

Periods: `since` keeps documents first seen by a run at or after it (a document enters the ledger at the first
run after it was produced, so this is the production cohort the SUN-ES feeding rate is computed on), runs
started since, and DMP feeds (fed_at) since. The lists of failures and deferred documents are always whole:
they are current work. All times are naive UTC, as in the ledger; days are UTC days.
"""

from __future__ import annotations

import collections
import datetime as dt

import sqlalchemy as sa

from connector.ledger.repo import Ledger, utcnow
from connector.ledger.schema import (
    APPROVED, DELETED, DEPRECATED, DEFERRED, FAILED, FED, PENDING, SKIPPED, STATES, SUBMITTING, certificates, documents, runs, write_back_pending,
)

# A document the connector is, was or will be trying to feed: the feeding rate's denominator.
ELIGIBLE_STATES = (FED, DEFERRED, FAILED, SUBMITTING, PENDING)


def collect(ledger: Ledger, *, since: dt.date | None = None, now: dt.datetime | None = None,
            last_runs: int = 5, failures: int = 50) -> dict:
    d = documents
    start = dt.datetime.combine(since, dt.time()) if since else None
    since_day = sa.bindparam("since_day", since, type_=sa.Date)
    # date(column) is what the expression index ix_documents_cells (migration 0003) holds: a str on SQLite, a
    # date on PostgreSQL, so str() for both. `day >= since` is `first_seen_at >= since 00:00`, on the index.
    day, fed_day = sa.func.date(d.c.first_seen_at), sa.func.date(d.c.fed_at)
    with ledger.engine.connect() as conn:
        # One pass over ix_documents_cells, in its order, gives states, reasons, sites, types, days and (for the
        # whole ledger) feeds per day: a million documents are read once instead of three times.
        cells = conn.execute(
            sa.select(day, d.c.state, d.c.reason, d.c.finess_geo, d.c.type_code, fed_day, sa.func.count())
            .where(*([day >= since_day] if since else []))
            .group_by(day, d.c.state, d.c.reason, d.c.finess_geo, d.c.type_code, fed_day)
        ).all()
        if since:  # feeds since DATE include documents first seen before it, outside the cells read above
            fed_since = conn.execute(
                sa.select(fed_day, sa.func.count()).where(fed_day >= since_day).group_by(fed_day)
            ).all()
        oldest_deferred = conn.execute(sa.select(sa.func.min(d.c.first_attempt_at)).where(d.c.state == DEFERRED)).scalar()
        oldest_submitting = conn.execute(sa.select(sa.func.min(d.c.updated_at)).where(d.c.state == SUBMITTING)).scalar()
        pending = conn.execute(sa.select(sa.func.count(), sa.func.min(write_back_pending.c.since))).one()
        expiry = {r.purpose: r.not_after for r in conn.execute(sa.select(certificates.c.purpose, certificates.c.not_after))}
        failed_total = conn.execute(sa.select(sa.func.count()).where(d.c.state == FAILED)).scalar()
        in_the_dmp = dict(conn.execute(sa.select(d.c.dmp_status, sa.func.count()).where(d.c.dmp_status.is_not(None))
                                       .group_by(d.c.dmp_status)).all())
        failed = [dict(r._mapping) for r in conn.execute(
            sa.select(d.c.document_id, d.c.version, d.c.finess_geo, d.c.type_code, d.c.reason, d.c.detail,
                      d.c.updated_at)
            .where(d.c.state == FAILED).order_by(d.c.updated_at.desc()).limit(failures))]
        deferred = [dict(r._mapping) for r in conn.execute(
            sa.select(d.c.document_id, d.c.version, d.c.finess_geo, d.c.reason, d.c.detail, d.c.attempts,
                      d.c.next_attempt_at)
            .where(d.c.state == DEFERRED).order_by(d.c.next_attempt_at).limit(failures))]
        recent = [_run(r) for r in conn.execute(
            sa.select(runs.c.id, runs.c.mode, runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.counts,
                      runs.c.message)
            .where(*([runs.c.started_at >= start] if since else []))
            .order_by(runs.c.id.desc()).limit(last_runs))]
        last_success = conn.execute(
            sa.select(sa.func.max(runs.c.finished_at)).where(runs.c.status == "done", runs.c.mode != "dry-run")
        ).scalar()

    by_site, by_type, by_day, fed_on = _fold(cells)
    if since:
        fed_on = {str(k): n for k, n in fed_since}
    by_state = collections.Counter()
    by_reason = collections.Counter()
    for (_site, state, reason), n in by_site.items():
        by_state[state] += n
        if reason is not None:
            by_reason[(state, reason)] += n
    return {
        "ledger": ledger.engine.url.render_as_string(hide_password=True),
        "generated_at": now or utcnow(),
        "since": since,
        "documents_by_state": {s: by_state.get(s, 0) for s in STATES},
        # document versions by the status of their entry in the DMP: replaced ones Deprecated, withdrawn ones Deleted
        "dmp_entries": {s: in_the_dmp.get(s, 0) for s in (APPROVED, DEPRECATED, DELETED)},
        "documents_by_reason": [{"state": s, "reason": r, "count": n}
                                for (s, r), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
        "oldest_deferred_since": oldest_deferred,
        "oldest_submitting_since": oldest_submitting,  # a SUBMITTING document's last change (stranded if old)
        "write_back_pending": pending[0],
        "write_back_pending_since": pending[1],
        "certificate_expiry": expiry,  # as the last run loaded them (status never loads the certificates)
        "failed_total": failed_total,
        "failed": failed,
        "deferred": deferred,
        "last_runs": recent,
        "last_success_at": last_success,
        "indicators": {
            "by_site": _indicators((*key, n) for key, n in by_site.items()),
            "by_type": _indicators((*key, n) for key, n in by_type.items()),
            "by_day": _indicators((*key, n) for key, n in by_day.items()),
            "by_month": _indicators((k[:7], state, reason, n) for (k, state, reason), n in by_day.items()),
        },
        "fed_per_day": [{"day": k, "fed": n} for k, n in sorted(fed_on.items())],
    }


def _fold(cells) -> tuple[collections.Counter, ...]:
    """The cells added up per (site | type | day, state, reason), and feeds per day: in one loop, as a ledger of
    many sites and types has tens of thousands of cells."""
    by_site, by_type, by_day, fed_on = (collections.Counter() for _ in range(4))
    for day, state, reason, site, type_code, fed_day, n in cells:
        by_site[site, state, reason] += n
        by_type[type_code, state, reason] += n
        by_day[str(day), state, reason] += n
        if fed_day is not None:
            fed_on[str(fed_day)] += n
    return by_site, by_type, by_day, fed_on


def _indicators(cells) -> list[dict]:
    """Per key: fed, eligible, feeding rate (fed / eligible) and skipped documents by reason."""
    rows: dict = {}
    for key, state, reason, n in cells:
        row = rows.setdefault(key, {"key": key, "fed": 0, "eligible": 0, "skipped_total": 0, "skipped": {}})
        if state == FED:
            row["fed"] += n
        if state in ELIGIBLE_STATES:
            row["eligible"] += n
        elif state == SKIPPED:
            row["skipped_total"] += n
            row["skipped"][reason or "?"] = row["skipped"].get(reason or "?", 0) + n
    for row in rows.values():
        row["feeding_rate"] = round(row["fed"] / row["eligible"], 4) if row["eligible"] else None
        row["skipped"] = dict(sorted(row["skipped"].items()))
    return sorted(rows.values(), key=lambda r: (r["key"] is None, r["key"] or ""))


def _run(r) -> dict:
    row = dict(r._mapping)
    row["duration_s"] = round((r.finished_at - r.started_at).total_seconds(), 1) if r.finished_at else None
    return row
