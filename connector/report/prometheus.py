"""node-exporter textfile metrics, written atomically (temp file + rename) so the collector never reads half a file."""

from __future__ import annotations

import calendar
import datetime as dt
import os
import tempfile
from pathlib import Path


def _labels(**labels) -> str:
    def esc(v):
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _ts(value: dt.datetime | None) -> int:
    return calendar.timegm(value.timetuple()) if value else 0  # naive UTC -> epoch seconds


# The last run's status as one label-free number (alert on `> 0`); the same codes as `run`'s exit, where there is one.
RUN_STATUS = {"done": 0, "interrupted": 1, "failed": 2, "unreachable": 4, "tls_refused": 6, "running": 9}


def to_prometheus(report: dict) -> str:
    from connector import __version__
    out: list[str] = []

    def metric(name, kind, help_, samples):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(**labels)} {value}" for labels, value in samples)

    metric("dmp_connector_build_info", "gauge", "The connector's version (always 1).", [({"version": __version__}, 1)])
    metric("dmp_connector_documents", "gauge", "Documents in the ledger by state.",
           [({"state": s}, n) for s, n in report["documents_by_state"].items()])
    metric("dmp_connector_documents_by_reason", "gauge", "Documents by state and reason (skips, deferrals, failures).",
           [({"state": r["state"], "reason": r["reason"]}, r["count"]) for r in report["documents_by_reason"]])
    sites = report["indicators"]["by_site"]
    # gauges: a document's state changes (an eligible one may become skipped, the ledger purged): never counters
    metric("dmp_connector_fed_documents", "gauge", "Documents fed to the DMP, per site (FINESS géo).",
           [({"site": r["key"] or ""}, r["fed"]) for r in sites])
    metric("dmp_connector_eligible_documents", "gauge", "Documents eligible for feeding, per site.",
           [({"site": r["key"] or ""}, r["eligible"]) for r in sites])
    metric("dmp_connector_feeding_ratio", "gauge", "Fed / eligible, per site (SUN-ES feeding rate).",
           [({"site": r["key"] or ""}, r["feeding_rate"]) for r in sites if r["feeding_rate"] is not None])
    metric("dmp_connector_failed_documents", "gauge", "FAILED documents that need a human.",
           [({}, report.get("failed_total", len(report["failed"])))])
    metric("dmp_connector_oldest_deferred_timestamp_seconds", "gauge",
           "First attempt of the oldest deferred document (0: none).", [({}, _ts(report["oldest_deferred_since"]))])
    oldest = report["oldest_deferred_since"]
    metric("dmp_connector_oldest_deferred_age_seconds", "gauge", "Age of the oldest deferred document (0: none).",
           [({}, int((report["generated_at"] - oldest).total_seconds()) if oldest else 0)])
    metric("dmp_connector_submitting_documents", "gauge", "Documents SUBMITTING (stranded if no run is going on).",
           [({}, report["documents_by_state"].get("SUBMITTING", 0))])
    metric("dmp_connector_write_back_failures", "gauge",
           "Documents whose dmp_feed_status row could not be written yet (retried by every run).",
           [({}, report.get("write_back_pending", 0))])
    metric("dmp_connector_certificate_expiry_timestamp_seconds", "gauge",
           "notAfter of each certificate, as the last run loaded it.",
           [({"purpose": p}, _ts(t)) for p, t in sorted(report.get("certificate_expiry", {}).items())])
    metric("dmp_connector_last_success_timestamp_seconds", "gauge",
           "End of the last successful run (0: never).", [({}, _ts(report.get("last_success_at")))])
    if report["last_runs"]:
        last = report["last_runs"][0]
        metric("dmp_connector_last_run_timestamp_seconds", "gauge", "Start of the last run.",
               [({}, _ts(last["started_at"]))])
        metric("dmp_connector_last_run_status", "gauge", "The last run's end: " + ", ".join(
            f"{code} {name}" for name, code in RUN_STATUS.items()) + ".", [({}, RUN_STATUS.get(last["status"], 9))])
        if last.get("duration_s") is not None:
            metric("dmp_connector_last_run_duration_seconds", "gauge", "Duration of the last finished run.",
                   [({}, last["duration_s"])])
    intake = report.get("intake")
    if intake and "total" in intake:
        total = intake["total"]
        metric("dmp_connector_intake_messages_total", "counter",
               "HL7 intake messages by outcome (accepted, resend, or the refusal's ACK and ERR codes).",
               [({"outcome": "accepted"}, total["accepted"]), ({"outcome": "resend"}, total["resends"])]
               + [({"outcome": code}, n) for code, n in total["refused_by_code"].items()])
        buckets = [({"le": f"{int(b) / 1000:g}"}, n) for b, n in total["ack_latency_ms_buckets"].items()]
        out.append("# HELP dmp_connector_intake_ack_latency_seconds HL7 intake: message read to ACK ready.")
        out.append("# TYPE dmp_connector_intake_ack_latency_seconds histogram")
        out.extend(f"dmp_connector_intake_ack_latency_seconds_bucket{_labels(**labels)} {n}" for labels, n in buckets)
        out.append(f'dmp_connector_intake_ack_latency_seconds_bucket{{le="+Inf"}} {total["messages"]}')
        out.append(f"dmp_connector_intake_ack_latency_seconds_sum {total['ack_latency_ms_sum'] / 1000:g}")
        out.append(f"dmp_connector_intake_ack_latency_seconds_count {total['messages']}")
        metric("dmp_connector_intake_listener_seen_timestamp_seconds", "gauge",
               "Last heartbeat of each HL7 intake listener (host:port).",
               [({"instance": r["instance"]}, _ts(r["seen_at"])) for r in intake["listeners"]])
        metric("dmp_connector_intake_listener_running", "gauge", "1 unless the listener recorded a clean stop.",
               [({"instance": r["instance"]}, 0 if r["stopped_at"] else 1) for r in intake["listeners"]])
    folder = (intake or {}).get("folder")
    if folder:
        total = folder["total"]
        metric("dmp_connector_intake_folder_files_total", "counter",
               "Drop folder files by outcome (accepted, resend, or the rejection's code).",
               [({"outcome": "accepted"}, total["accepted"]), ({"outcome": "resend"}, total["resends"])]
               + [({"outcome": code}, n) for code, n in total["refused_by_code"].items()])
        metric("dmp_connector_intake_folder_watcher_seen_timestamp_seconds", "gauge",
               "Last heartbeat of each drop folder watcher (host:path).",
               [({"instance": r["instance"]}, _ts(r["seen_at"])) for r in folder["watchers"]])
        metric("dmp_connector_intake_folder_watcher_running", "gauge", "1 unless the watcher recorded a clean stop.",
               [({"instance": r["instance"]}, 0 if r["stopped_at"] else 1) for r in folder["watchers"]])
    return "\n".join(out) + "\n"


def write_textfile(report: dict, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(to_prometheus(report))
        os.chmod(tmp, 0o644)  # node-exporter runs as another user; the figures are aggregates, not patient data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
