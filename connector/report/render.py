"""Text, JSON and CSV renderings of a report from `figures.collect`."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

INDICATOR_SECTIONS = (("by_site", "site", "Per site (FINESS géo)"), ("by_type", "type", "Per document type (LOINC)"),
                      ("by_month", "month", "Per month first seen"), ("by_day", "day", "Per day first seen"))


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def to_json(report: dict) -> str:
    return json.dumps(report, ensure_ascii=False, indent=1, default=_iso)


def _iso(value):
    if isinstance(value, dt.datetime):  # the ledger's times are UTC: said so in every format
        return value.replace(tzinfo=dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_text(report: dict) -> str:
    lines = [f"Ledger: {report['ledger']}"] if report.get("ledger") else []
    if report.get("since"):
        lines.append(f"Since {report['since']} (documents first seen, runs started, feeds)")
    lines.append("Documents by state:")
    lines += [f"  {state:<11} {n}" for state, n in report["documents_by_state"].items()]
    if report.get("dmp_entries"):
        lines.append("In the DMP (document versions by entry status):")
        lines += [f"  {status:<11} {n}" for status, n in report["dmp_entries"].items()]
    if report["documents_by_reason"]:
        lines.append("By reason:")
        lines += [f"  {r['state']:<11} {r['reason']:<24} {r['count']}" for r in report["documents_by_reason"]]
    if report["oldest_deferred_since"]:
        lines.append(f"Oldest deferred since: {report['oldest_deferred_since']} UTC")
    if report["failed"]:
        lines.append(f"Failed: {report.get('failed_total', len(report['failed']))} "
                     "(need a human; `dmp-connector replay` after correction):")
        lines += [f"  {f['document_id']} v{f['version']}  {f['reason']}  {f['detail'] or ''}" for f in report["failed"]]
    if report["deferred"]:
        lines.append("Deferred:")
        lines += [f"  {f['document_id']} v{f['version']}  {f['reason'] or ''}  {f['detail'] or ''}  attempts "
                  f"{f['attempts']}, next {f['next_attempt_at']} UTC" for f in report["deferred"]]
    for key, _label, title in INDICATOR_SECTIONS:
        rows = report.get("indicators", {}).get(key)
        if rows:
            lines.append(f"{title}: fed / eligible = feeding rate; skipped by reason")
            for r in rows:
                skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items())
                lines.append(f"  {r['key'] or '(none)':<10} {r['fed']:>7} / {r['eligible']:<7} {rate(r['feeding_rate']):>7}"
                             f"  skipped {r['skipped_total']}{f' ({skipped})' if skipped else ''}")
    lines.append("Last runs:")
    for r in report["last_runs"]:
        counts = ", ".join(f"{k} {v}" for k, v in (r["counts"] or {}).items())
        took = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else "running"
        lines.append(f"  #{r['id']} {r['mode']:<8} {r['status']:<8} {r['started_at']} UTC  {took}  {counts}")
        if r.get("message"):
            lines.append(f"      {r['message']}")
    if not report["last_runs"]:
        lines.append("  (none yet)")
    if report.get("last_success_at"):
        lines.append(f"Last successful run finished: {report['last_success_at']} UTC")
    lines += intake_text(report.get("intake"))
    return "\n".join(line.rstrip() for line in lines)  # no trailing spaces (an empty detail)


INTAKE_PERIODS = (("this_hour", "this hour"), ("previous_hour", "previous hour"), ("last_24h", "last 24 h"),
                  ("total", "since the start"))


def intake_text(intake: dict | None) -> list[str]:
    """The intakes' sections, if the store has them: the HL7 listeners and messages by outcome with their ACK
    latency; the drop folder's watchers and files by outcome."""
    if not intake:
        return []
    if "unavailable" in intake:
        return [f"HL7 intake: figures unavailable ({intake['unavailable']})"]
    lines = []
    if intake["listeners"] or intake["total"]["messages"] or "folder" not in intake:
        lines.append("HL7 intake:")
        for r in intake["listeners"]:
            lines.append(f"  listener {r['instance']}  {_running(r)}")
        for key, label in INTAKE_PERIODS:
            f = intake[key]
            latency = (f"; ACK p50 <= {_ms(f['ack_latency_ms_p50'])}, p99 <= {_ms(f['ack_latency_ms_p99'])}"
                       if f["messages"] else "")
            lines.append(f"  {label:<15} {f['messages']} messages: {_outcomes(f)}{latency}")
    if "folder" in intake:
        folder = intake["folder"]
        lines.append("Folder intake:")
        for r in folder["watchers"]:
            lines.append(f"  watcher {r['instance']}  {_running(r)}")
        for key, label in INTAKE_PERIODS:
            lines.append(f"  {label:<15} {folder[key]['messages']} files: {_outcomes(folder[key])}")
    return lines


def _running(r: dict) -> str:
    state = f"stopped {r['stopped_at']} UTC" if r["stopped_at"] else f"running, last seen {r['seen_at']} UTC"
    return f"{state} (started {r['started_at']} UTC)"


def _outcomes(f: dict) -> str:
    refused = ", ".join(f"{code} {n}" for code, n in f["refused_by_code"].items())
    return (f"{f['accepted']} accepted, {f['resends']} resends, {f['refused']} refused"
            + (f" ({refused})" if refused else ""))


def _ms(bound: int) -> str:
    return "more than 5000 ms" if bound == -1 else f"{bound} ms"


CSV_HEADER = ("section", "key", "metric", "value")


def csv_rows(report: dict):
    """Long format (section, key, metric, value): one figure per line, ready for a spreadsheet's pivot table."""
    for state, n in report["documents_by_state"].items():
        yield "state", state, "documents", n
    for status, n in report.get("dmp_entries", {}).items():
        yield "dmp_entries", status, "documents", n
    for r in report["documents_by_reason"]:
        yield "reason", r["reason"], r["state"], r["count"]
    for key, label, _title in INDICATOR_SECTIONS:
        for r in report.get("indicators", {}).get(key, []):
            yield label, r["key"] or "", "fed", r["fed"]
            yield label, r["key"] or "", "eligible", r["eligible"]
            yield label, r["key"] or "", "feeding_rate", "" if r["feeding_rate"] is None else r["feeding_rate"]
            yield label, r["key"] or "", "skipped", r["skipped_total"]
            for reason, n in r["skipped"].items():
                yield label, r["key"] or "", f"skipped:{reason}", n
    for r in report.get("fed_per_day", []):
        yield "fed_per_day", r["day"], "fed", r["fed"]
    for f in report["failed"]:
        yield "failed", f"{f['document_id']} v{f['version']}", f["reason"] or "", f["updated_at"]
    for f in report["deferred"]:
        yield "deferred", f"{f['document_id']} v{f['version']}", f["reason"] or "", f["next_attempt_at"]
    for r in report["last_runs"]:
        key = str(r["id"])
        yield "run", key, "status", r["status"]
        yield "run", key, "started_at", r["started_at"]
        yield "run", key, "duration_s", "" if r.get("duration_s") is None else r["duration_s"]
        for name, n in (r["counts"] or {}).items():
            yield "run", key, name, n
    if report.get("oldest_deferred_since"):
        yield "summary", "", "oldest_deferred_since", report["oldest_deferred_since"]
    if report.get("last_success_at"):
        yield "summary", "", "last_success_at", report["last_success_at"]
    intake = report.get("intake")
    if intake and "unavailable" in intake:
        yield "intake", "", "unavailable", intake["unavailable"]
    elif intake:
        for r in intake["listeners"]:
            yield "intake_listener", r["instance"], "seen_at", r["seen_at"]
            yield "intake_listener", r["instance"], "stopped_at", r["stopped_at"] or ""
        for key, _label in INTAKE_PERIODS:
            f = intake[key]
            for metric in ("messages", "accepted", "resends", "refused", "ack_latency_ms_p50", "ack_latency_ms_p99"):
                yield "intake", key, metric, "" if f[metric] is None else f[metric]
            for code, n in f["refused_by_code"].items():
                yield "intake", key, f"refused:{code}", n
        folder = intake.get("folder")
        for r in folder["watchers"] if folder else ():
            yield "intake_folder_watcher", r["instance"], "seen_at", r["seen_at"]
            yield "intake_folder_watcher", r["instance"], "stopped_at", r["stopped_at"] or ""
        for key, _label in INTAKE_PERIODS if folder else ():
            f = folder[key]
            for metric in ("messages", "accepted", "resends", "refused"):
                yield "intake_folder", key, metric.replace("messages", "files"), f[metric]
            for code, n in f["refused_by_code"].items():
                yield "intake_folder", key, f"refused:{code}", n


def to_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for section, key, metric, value in csv_rows(report):
        writer.writerow((section, key, metric,
                         value.replace(tzinfo=dt.UTC).isoformat(sep=" ") if isinstance(value, dt.datetime) else value))
    return out.getvalue()
