"""`status`: what the ledger says, for an operator and for monitoring (aggregates only, never per-patient data).

`collect` gathers the figures (connector/report/figures.py), `render` formats them (text, json, csv, html),
`problems` says why monitoring should alert (`status --check`), `write_prometheus` feeds node-exporter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from connector.config import MonitoringSettings
from connector.ledger.repo import Ledger, utcnow
from connector.report import figures, prometheus, render as renderers
from connector.report.html import to_html

FORMATS = ("text", "json", "csv", "html")
DEFAULT_MAX_AGE_HOURS = 26  # a nightly run plus its randomized delay and a slow night


def collect(ledger: Ledger, *, since: dt.date | None = None, now: dt.datetime | None = None,
            last_runs: int = 5, failures: int = 50) -> dict:
    return figures.collect(ledger, since=since, now=now, last_runs=last_runs, failures=failures)


def with_intake(report: dict, settings) -> dict:
    """`report` with the HL7 intake's figures (`report["intake"]`) when the store has the intake's tables; a store
    out of reach says so there (the ledger's figures stand)."""
    from connector.intake import figures as intake_figures

    url = settings.store.url
    if url.startswith("sqlite") and "///" in url and not Path(url.split("///", 1)[1]).exists():
        return report  # no store file: no intake (never create one here)
    try:
        found = intake_figures.collect(url, now=report.get("generated_at"))
    except Exception as exc:  # noqa: BLE001 - any failure of the store: the figures are unavailable, said so
        found = {"unavailable": f"store unreachable: {type(getattr(exc, 'orig', exc)).__name__}"}
    if found is not None:
        report["intake"] = found
    return report


def render(report: dict, fmt: str = "text", *, health: "Health | None" = None, site_names: dict | None = None) -> str:
    """`health` (the page's headline verdict, as `--check`) and the sites' names are for HTML."""
    if fmt == "html":
        return to_html(report, health, site_names)
    return {"text": renderers.to_text, "json": renderers.to_json, "csv": renderers.to_csv}[fmt](report)


OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3  # the monitoring-plugin exit codes (Nagios, Icinga, Zabbix, Centreon)
LEVELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass(frozen=True)
class Health:
    level: int  # OK, WARNING, CRITICAL, UNKNOWN
    reasons: list[tuple[int, str]]  # (level, why), the most serious first
    perfdata: list[str]

    def status_line(self) -> str:
        """One line, as monitoring plugins print it: `DMP-CONNECTOR WARNING - why; why | perfdata`."""
        why = "; ".join(text for _, text in self.reasons) or "feeding normally"
        return f"DMP-CONNECTOR {LEVELS[self.level]} - {why} | {' '.join(self.perfdata)}"


def health(report: dict, m: MonitoringSettings | None = None, *, now: dt.datetime | None = None,
           sites: tuple[str, ...] = ()) -> Health:
    """Why a human should look (WARNING: today, CRITICAL: now), from the whole ledger's report. Every threshold
    is a setting ([monitoring]); `sites` are the configured FINESS géo."""
    m, now = m or MonitoringSettings(), now or utcnow()
    found: list[tuple[int, str]] = []
    last = report["last_runs"][0] if report.get("last_runs") else None
    if last and last["status"] == "unreachable":
        found.append((CRITICAL, f"DMP unreachable in run #{last['id']}: {last.get('message') or 'no detail'}"))
    elif last and last["status"] == "tls_refused":
        found.append((CRITICAL, f"TLS with the DMP refused in run #{last['id']} (a configuration problem): "
                                f"{last.get('message') or 'no detail'}"))
    elif last and last["status"] == "failed":
        found.append((CRITICAL, f"run #{last['id']} failed: {last.get('message') or 'see its log'}"))
    if last and (last.get("counts") or {}).get("error"):
        found.append((WARNING, f"run #{last['id']}: {last['counts']['error']} document(s) hit an unexpected error "
                               "while being delivered (INTERNAL_ERROR: see its log)"))
    failed = report.get("failed_total", 0)
    if failed:
        level = CRITICAL if m.failed_critical and failed >= m.failed_critical else WARNING
        found.append((level, f"{failed} document(s) FAILED and need a human (`dmp-connector status`, then replay)"))
    deferred_age = _age_hours(report.get("oldest_deferred_since"), now)
    if deferred_age is not None and deferred_age >= m.deferred_warning_hours:
        level = CRITICAL if deferred_age >= m.deferred_critical_hours else WARNING
        found.append((level, f"documents DEFERRED for {deferred_age:.0f} hours (first tried "
                             f"{report['oldest_deferred_since']:%Y-%m-%d %H:%M} UTC)"))
    stranded = _age_hours(report.get("oldest_submitting_since"), now)
    if stranded is not None and stranded * 60 >= m.submitting_stranded_minutes:
        found.append((WARNING, f"{report['documents_by_state'].get('SUBMITTING', 0)} document(s) SUBMITTING for "
                               f"{stranded:.1f} hours: no run settled them (the next run will, by ITI-18)"))
    for purpose, not_after in sorted(report.get("certificate_expiry", {}).items()):
        days = (not_after - now).total_seconds() / 86400
        if days <= m.certificate_warning_days:
            level = CRITICAL if days <= m.certificate_critical_days else WARNING
            what = "expired" if days < 0 else f"expires in {days:.0f} day(s)"
            found.append((level, f"certificate {purpose} {what} ({not_after:%Y-%m-%d} UTC)"))
    if last:
        for reason in m.attention_skip_reasons:
            n = (last.get("counts") or {}).get(f"newly_skipped:{reason}")
            if n:
                found.append((WARNING, f"run #{last['id']} newly skipped {n} document(s) {reason}"
                                       f"{_SKIP_HINTS.get(reason, '')}"))
    seen_sites = {r["key"] for r in report.get("indicators", {}).get("by_site", [])}
    if last and "SITE_UNKNOWN" in m.attention_skip_reasons and seen_sites:
        for finess in sorted(set(sites) - seen_sites):
            found.append((WARNING, f"site {finess} of structure.sites has no document in the ledger "
                                   "(a typo in its FINESS géo?)"))
    found += _intake_health(report.get("intake"), m, now)
    if report.get("write_back_pending"):
        found.append((WARNING, f"{report['write_back_pending']} dmp_feed_status row(s) not written since "
                               f"{report['write_back_pending_since']:%Y-%m-%d %H:%M} UTC (`dmp-connector write-back`)"))
    success_age = _age_hours(report.get("last_success_at"), now)
    if success_age is None:
        found.append((CRITICAL, "no successful run recorded in this ledger"))
    elif success_age >= m.last_success_warning_hours:
        level = CRITICAL if success_age >= m.last_success_critical_hours else WARNING
        found.append((level, f"last successful run finished {report['last_success_at']:%Y-%m-%d %H:%M} UTC, "
                             f"more than {m.last_success_warning_hours:g} hours ago"))
    found.sort(key=lambda f: -f[0])
    return Health(max([OK, *(level for level, _ in found)]), found, _perfdata(report, m, now))


def _intake_health(intake: dict | None, m: MonitoringSettings, now: dt.datetime) -> list[tuple[int, str]]:
    """The intakes: a listener (or drop folder watcher) whose heartbeat stopped without a clean stop is down
    (CRITICAL), one stopped cleanly is a WARNING; refusals rising (this hour at least
    monitoring.intake_refused_warning, more than the hour before) a WARNING."""
    if not intake:
        return []
    if "unavailable" in intake:  # a store out of reach: status says so; a store without intake must not alert
        return []
    folder = intake.get("folder") or {"watchers": []}
    return (_intake_checks("HL7 intake listener", "HL7 intake", "message(s)", intake["listeners"], intake, m, now)
            + (_intake_checks("folder intake watcher", "folder intake", "file(s)", folder["watchers"], folder, m, now)
               if intake.get("folder") else []))


def _intake_checks(who: str, what: str, unit: str, running: list, figures_: dict, m: MonitoringSettings,
                   now: dt.datetime) -> list[tuple[int, str]]:
    found = []
    for r in running:
        silent = (now - r["seen_at"]).total_seconds() / 60
        if r["stopped_at"]:
            found.append((WARNING, f"{who} {r['instance']} stopped {r['stopped_at']:%Y-%m-%d %H:%M} UTC"))
        elif silent >= m.intake_down_minutes:
            found.append((CRITICAL, f"{who} {r['instance']} down: not seen for {silent:.0f} minutes "
                                    f"(since {r['seen_at']:%Y-%m-%d %H:%M} UTC)"))
    now_refused, before = figures_["this_hour"]["refused"], figures_["previous_hour"]["refused"]
    if now_refused >= m.intake_refused_warning and now_refused > before:
        codes = ", ".join(f"{c} {n}" for c, n in figures_["this_hour"]["refused_by_code"].items())
        found.append((WARNING, f"{what}: {now_refused} {unit} refused this hour ({codes}), {before} the hour "
                               "before: see the intake's log"))
    return found


_SKIP_HINTS = {"SITE_UNKNOWN": " (their FINESS géo is not in structure.sites: a typo?)",
               "TYPE_NOT_ALLOWED": " (type code outside JDV_J07 or rules.allowed_type_codes)"}


def _age_hours(since: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if since is None else (now - since).total_seconds() / 3600


def _perfdata(report: dict, m: MonitoringSettings, now: dt.datetime) -> list[str]:
    """label=value[unit];warn;crit;min (a `N:` threshold alerts below N)."""
    def age(since):
        return 0 if since is None else int((now - since).total_seconds())

    states = report["documents_by_state"]
    out = [f"failed={report.get('failed_total', 0)};1;{m.failed_critical or ''};0",
           f"deferred={states.get('DEFERRED', 0)};;;0",
           f"submitting={states.get('SUBMITTING', 0)};;;0",
           f"oldest_deferred_age={age(report.get('oldest_deferred_since'))}s;"
           f"{int(m.deferred_warning_hours * 3600)};{int(m.deferred_critical_hours * 3600)};0",
           f"write_back_pending={report.get('write_back_pending', 0)};1;;0"]
    if report.get("last_success_at"):
        out.append(f"last_success_age={age(report['last_success_at'])}s;{int(m.last_success_warning_hours * 3600)};"
                   f"{int(m.last_success_critical_hours * 3600)};0")
    for purpose, not_after in sorted(report.get("certificate_expiry", {}).items()):
        out.append(f"{purpose}_expiry_days={(not_after - now).total_seconds() / 86400:.1f};"
                   f"{m.certificate_warning_days:g}:;{m.certificate_critical_days:g}:")
    return out


def problems(report: dict, *, max_age_hours: float = DEFAULT_MAX_AGE_HOURS, now: dt.datetime | None = None) -> list[str]:
    """The reasons of `health` with the default thresholds (last success: `max_age_hours`). Empty: all is well."""
    m = MonitoringSettings(last_success_warning_hours=max_age_hours,
                           last_success_critical_hours=max(max_age_hours, MonitoringSettings.last_success_critical_hours))
    return [text for _, text in health(report, m, now=now).reasons]


def write_prometheus(report: dict, path: Path) -> None:
    prometheus.write_textfile(report, path)
