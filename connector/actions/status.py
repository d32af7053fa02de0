"""`status`: what the ledger says, for an operator and for monitoring (aggregates only, never per-patient data).

`collect` gathers the figures (connector/report/figures.py), `render` formats them (text, json, csv, html),
`problems` says why monitoring should alert (`status --check`), `write_prometheus` feeds node-exporter.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from connector.ledger.repo import Ledger, utcnow
from connector.report import figures, prometheus, render as renderers
from connector.report.html import to_html

FORMATS = ("text", "json", "csv", "html")
DEFAULT_MAX_AGE_HOURS = 26  # a nightly run plus its randomized delay and a slow night


def collect(ledger: Ledger, *, since: dt.date | None = None, now: dt.datetime | None = None,
            last_runs: int = 5, failures: int = 50) -> dict:
    return figures.collect(ledger, since=since, now=now, last_runs=last_runs, failures=failures)


def render(report: dict, fmt: str = "text") -> str:
    return {"text": renderers.to_text, "json": renderers.to_json, "csv": renderers.to_csv, "html": to_html}[fmt](report)


def problems(report: dict, *, max_age_hours: float = DEFAULT_MAX_AGE_HOURS, now: dt.datetime | None = None) -> list[str]:
    """Why a human should look now: FAILED documents, or no successful run recently. Empty: all is well."""
    now = now or utcnow()
    found = []
    if report.get("failed_total"):
        found.append(f"{report['failed_total']} document(s) FAILED and need a human (see `dmp-connector status`)")
    last_run = (report.get("last_runs") or [{}])[0]
    if (last_run.get("counts") or {}).get("error"):
        found.append(f"run #{last_run['id']}: {last_run['counts']['error']} document(s) hit an unexpected error "
                     "while being delivered (INTERNAL_ERROR: see its log)")
    last = report.get("last_success_at")
    if last is None:
        found.append("no successful run recorded yet")
    elif now - last > dt.timedelta(hours=max_age_hours):
        found.append(f"last successful run finished {last:%Y-%m-%d %H:%M} UTC, "
                     f"more than {max_age_hours:g} hours ago")
    return found


def write_prometheus(report: dict, path: Path) -> None:
    prometheus.write_textfile(report, path)
