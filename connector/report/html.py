"""The report as one self-contained HTML file: inline CSS, an inline SVG bar chart, no external asset
(it is mailed or archived as is)."""

from __future__ import annotations

from html import escape

from connector.report.render import INDICATOR_SECTIONS, rate

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#a00}svg{background:#fafafa;border:1px solid #ddd}
rect{fill:#2f6fb0}text{font-size:10px;fill:#555}"""


def _table(head: list[str], rows: list[list], numeric_from: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="n">{escape(str(v))}</td>' if i >= numeric_from else f"<td>{escape(str(v))}</td>"
                        for i, v in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    return "".join(out) + "</table>"


def chart(fed_per_day: list[dict], width: int = 760, height: int = 180) -> str:
    """Bars of documents fed per day (one <rect> per day, with a <title> tooltip)."""
    if not fed_per_day:
        return "<p>No document fed yet.</p>"
    top = max(r["fed"] for r in fed_per_day) or 1
    step = width / len(fed_per_day)
    bars = []
    for i, r in enumerate(fed_per_day):
        h = round(r["fed"] / top * (height - 30), 1)
        bars.append(f'<rect x="{i * step + 1:.1f}" y="{height - 15 - h:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h}" data-day="{escape(r["day"])}" data-fed="{r["fed"]}">'
                    f'<title>{escape(r["day"])}: {r["fed"]}</title></rect>')
    first, last = escape(fed_per_day[0]["day"]), escape(fed_per_day[-1]["day"])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="fed-per-day" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="documents fed per day">'
            f'<text x="2" y="10">max {top}/day</text>{"".join(bars)}'
            f'<text x="2" y="{height - 2}">{first}</text>'
            f'<text x="{width - 2}" y="{height - 2}" text-anchor="end">{last}</text></svg>')


def to_html(report: dict) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dmp-connector status</title>"
             f"<style>{CSS}</style></head><body><h1>dmp-connector status</h1>",
             f"<p>Generated {escape(str(report['generated_at']))} UTC"
             + (f", since {escape(str(report['since']))}" if report.get("since") else "")
             + (f"; last successful run finished {escape(str(report['last_success_at']))} UTC"
                if report.get("last_success_at") else "; no successful run yet") + ".</p>",
             "<h2>Documents fed per day</h2>", chart(report.get("fed_per_day", [])),
             "<h2>Documents by state</h2>",
             _table(["state", "documents"], [[s, n] for s, n in report["documents_by_state"].items()]),
             "<h2>By reason</h2>",
             _table(["state", "reason", "documents"],
                    [[r["state"], r["reason"], r["count"]] for r in report["documents_by_reason"]], 2)]
    for key, label, title in INDICATOR_SECTIONS:
        rows = report.get("indicators", {}).get(key, [])
        parts.append(f'<h2 id="{label}">{escape(title)}</h2>')
        parts.append(_table([label, "fed", "eligible", "feeding rate", "skipped", "skipped by reason"],
                            [[r["key"] or "(none)", r["fed"], r["eligible"], rate(r["feeding_rate"]), r["skipped_total"],
                              ", ".join(f"{k} {v}" for k, v in r["skipped"].items())] for r in rows]))
    parts.append(f'<h2 class="{"bad" if report["failed"] else ""}">Failed ({report.get("failed_total", 0)})</h2>')
    parts.append(_table(["document", "version", "site", "reason", "detail", "since (UTC)"],
                        [[f["document_id"], f["version"], f["finess_geo"] or "", f["reason"] or "", f["detail"] or "",
                          f["updated_at"]] for f in report["failed"]], 99))
    parts.append("<h2>Deferred</h2>")
    if report.get("oldest_deferred_since"):
        parts.append(f"<p>Oldest deferred since {escape(str(report['oldest_deferred_since']))} UTC.</p>")
    parts.append(_table(["document", "version", "reason", "attempts", "next attempt (UTC)"],
                        [[f["document_id"], f["version"], f["reason"] or "", f["attempts"], f["next_attempt_at"]]
                         for f in report["deferred"]], 99))
    parts.append("<h2>Last runs</h2>")
    parts.append(_table(["run", "mode", "status", "started (UTC)", "duration (s)", "counts"],
                        [[r["id"], r["mode"], r["status"], r["started_at"],
                          "running" if r.get("duration_s") is None else r["duration_s"],
                          ", ".join(f"{k} {v}" for k, v in (r["counts"] or {}).items())] for r in report["last_runs"]],
                        99))
    parts.append("</body></html>")
    return "\n".join(parts)
