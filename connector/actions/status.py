"""`status`: what the ledger says, summarised for an operator (aggregates only, never per-patient data)."""

from __future__ import annotations

import sqlalchemy as sa

from connector.ledger.repo import Ledger
from connector.ledger.schema import DEFERRED, FAILED, STATES, documents, runs


def collect(ledger: Ledger, *, last_runs: int = 5, failures: int = 50) -> dict:
    d = documents
    with ledger.engine.connect() as conn:
        by_state = dict(conn.execute(sa.select(d.c.state, sa.func.count()).group_by(d.c.state)).all())
        by_reason = [
            {"state": s, "reason": r, "count": n}
            for s, r, n in conn.execute(
                sa.select(d.c.state, d.c.reason, sa.func.count())
                .where(d.c.reason.is_not(None))
                .group_by(d.c.state, d.c.reason)
                .order_by(sa.func.count().desc())
            )
        ]
        oldest_deferred = conn.execute(sa.select(sa.func.min(d.c.first_attempt_at)).where(d.c.state == DEFERRED)).scalar()
        failed = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(d.c.document_id, d.c.version, d.c.finess_geo, d.c.reason, d.c.detail, d.c.updated_at)
                .where(d.c.state == FAILED)
                .order_by(d.c.updated_at.desc())
                .limit(failures)
            )
        ]
        deferred = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(d.c.document_id, d.c.version, d.c.reason, d.c.detail, d.c.attempts, d.c.next_attempt_at)
                .where(d.c.state == DEFERRED)
                .order_by(d.c.next_attempt_at)
                .limit(failures)
            )
        ]
        recent = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(runs.c.id, runs.c.mode, runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.counts)
                .order_by(runs.c.id.desc())
                .limit(last_runs)
            )
        ]
    return {
        "documents_by_state": {s: by_state.get(s, 0) for s in STATES},
        "documents_by_reason": by_reason,
        "oldest_deferred_since": oldest_deferred,
        "failed": failed,
        "deferred": deferred,
        "last_runs": recent,
    }


def render_text(report: dict) -> str:
    lines = ["Documents by state:"]
    lines += [f"  {state:<11} {n}" for state, n in report["documents_by_state"].items()]
    if report["documents_by_reason"]:
        lines.append("By reason:")
        lines += [f"  {r['state']:<11} {r['reason']:<24} {r['count']}" for r in report["documents_by_reason"]]
    if report["oldest_deferred_since"]:
        lines.append(f"Oldest deferred since: {report['oldest_deferred_since']} UTC")
    if report["failed"]:
        lines.append("Failed (need a human; `dmp-connector replay` after correction):")
        lines += [f"  {f['document_id']} v{f['version']}  {f['reason']}  {f['detail'] or ''}" for f in report["failed"]]
    if report["deferred"]:
        lines.append("Deferred:")
        lines += [f"  {f['document_id']} v{f['version']}  attempts {f['attempts']}, next {f['next_attempt_at']} UTC"
                  for f in report["deferred"]]
    lines.append("Last runs:")
    for r in report["last_runs"]:
        duration = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
        counts = ", ".join(f"{k} {v}" for k, v in (r["counts"] or {}).items())
        took = f"{duration:.1f}s" if duration is not None else "running"
        lines.append(f"  #{r['id']} {r['mode']:<8} {r['status']:<8} {r['started_at']} UTC  {took}  {counts}")
    if not report["last_runs"]:
        lines.append("  (none yet)")
    return "\n".join(lines)
