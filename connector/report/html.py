"""The report as one self-contained HTML file: inline CSS, an inline SVG bar chart, no external asset
(it is mailed or archived as is)."""

from __future__ import annotations

from html import escape

from connector.report.render import INDICATOR_SECTIONS, intake_text, rate

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#a00}svg{background:#fafafa;border:1px solid #ddd}
rect{fill:#2f6fb0}text{font-size:10px;fill:#555}line{stroke:#999}
#verdict{padding:.6em 1em;border-radius:4px;border:1px solid}#verdict h2{margin:0}
.OK{background:#eaf6ea;border-color:#3a3}.WARNING{background:#fff6e0;border-color:#c90}
.CRITICAL,.UNKNOWN{background:#fdeaea;border-color:#c33}"""

# What a reason code means, for a reader who does not know them (README, "What is fed, and why not").
LEGEND = {
    "ALREADY_FED": "fed earlier: never sent twice",
    "PATIENT_UNKNOWN": "no patient row in the store for the document's patient",
    "INS_INVALID": "the patient's INS is missing or malformed",
    "ENVIRONMENT_MISMATCH": "a test INS on the real DMP, or the reverse",
    "INS_NOT_QUALIFIED": "the patient's identity is not qualified (INS qualifiée required)",
    "PATIENT_OPPOSED": "the patient opposed feeding",
    "PATIENT_DECEASED": "the patient died",
    "DOCUMENT_NOT_VALIDATED": "a draft or cancelled document",
    "NOT_FOR_DMP": "its sender marked it not destined to the DMP",
    "SITE_UNKNOWN": "the producing site is not configured (a FINESS typo?)",
    "TYPE_NOT_ALLOWED": "a document type the DMP or the configuration does not take",
    "IDENTITY_INCOMPLETE": "an identity trait the DMP requires is missing",
    "METADATA_MISSING": "a field the DMP requires is missing (author, dates…)",
    "VALUE_TOO_LONG": "a name or title too long for the DMP",
    "ROW_INVALID": "a malformed row in the store (the detail names the column)",
    "WITHDRAWN": "withdrawn from the DMP (cancelled, or by an operator)",
    "REPLACED": "replaced in the DMP by a later version",
    "CONTENT_MISSING": "the document's file is missing or unreadable",
    "CONTENT_INVALID": "the document's file is empty, not a PDF, or too large",
    "CDA_INVALID": "the document built for the DMP fails the official checks (a defect to report)",
    "METADATA_INVALID": "the request built for the DMP fails the official checks (a defect to report)",
    "HELD": "held by an operator (identity vigilance…)",
    "IN_PROGRESS": "being delivered",
    "DEFERRED_NOT_DUE": "waiting for its next attempt",
    "SUPERSEDED": "a later version is in the store",
    "DMP_UNREACHABLE": "the DMP could not be reached: tried again later",
    "TLS_REFUSED": "the secure connection with the DMP failed: a configuration problem",
    "TRANSIENT_ERROR": "the DMP was busy or failing: tried again later",
    "UNKNOWN_OUTCOME": "sent without a clear answer: checked with the DMP before anything is resent",
    "INTERNAL_ERROR": "an unexpected error of the connector: see its log",
    "EXPIRED": "still failing after the retry lifetime: needs a human",
    "XDSUnknownPatientId": "the patient has no DMP, or closed it",
    "RESEND_IMPOSSIBLE": "could not be rebuilt to be sent again (changed or gone from the store)",
}


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
    middle = fed_per_day[len(fed_per_day) // 2]["day"]
    base = height - 15
    # axes: documents (0 and the highest day) up the left, dates (first, middle, last) along the bottom
    axes = (f'<line x1="0" y1="{base}" x2="{width}" y2="{base}"/><line x1="0" y1="15" x2="0" y2="{base}"/>'
            f'<text class="y-axis" x="3" y="{15 + 9}">{top} documents</text>'
            f'<text class="y-axis" x="3" y="{base - 2}">0</text>'
            f'<text class="x-axis" x="2" y="{height - 2}">{first}</text>'
            f'<text class="x-axis" x="{width / 2:.0f}" y="{height - 2}" text-anchor="middle">{escape(middle)}</text>'
            f'<text class="x-axis" x="{width - 2}" y="{height - 2}" text-anchor="end">{last}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="fed-per-day" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="documents fed per day">'
            f'{"".join(bars)}{axes}</svg>')


def verdict(health) -> str:
    """The headline: the same verdict and reasons as `status --check`."""
    from connector.actions.status import LEVELS

    level = LEVELS[health.level]
    reasons = "".join(f"<li>{escape(LEVELS[lv])}: {escape(why)}</li>" for lv, why in health.reasons)
    summary = "feeding normally" if not health.reasons else f"{len(health.reasons)} point(s) need attention"
    return (f'<section id="verdict" class="{level}" data-level="{level}"><h2>{level}: {escape(summary)}</h2>'
            f'{f"<ul>{reasons}</ul>" if reasons else ""}</section>')


def _site(finess: str | None, names: dict) -> str:
    return "(none)" if not finess else f"{finess} {names[finess]}" if finess in names else finess


def legend(report: dict) -> str:
    """The reason codes the page shows, in plain words."""
    codes = {r["reason"] for r in report["documents_by_reason"]} | {f["reason"] for f in report["failed"]} | {
        f["reason"] for f in report["deferred"]}
    rows = [[code, LEGEND[code]] for code in sorted(c for c in codes if c in LEGEND)]
    rows += [[code, "an error code of the DMP (see its detail)"] for code in sorted(c for c in codes if c and c not in LEGEND)]
    return '<h2 id="legend">Legend: reasons</h2>' + _table(["reason", "meaning"], rows, 99)


def failed_block_lines(report: dict, names: dict) -> list[str]:
    """Failed and deferred documents: what needs a human first."""
    parts: list[str] = []
    parts.append(f'<h2 class="{"bad" if report["failed"] else ""}">Failed ({report.get("failed_total", 0)})</h2>')
    parts.append(_table(["document", "version", "site", "reason", "detail", "since (UTC)"],
                        [[f["document_id"], f["version"], _site(f["finess_geo"], names), f["reason"] or "", f["detail"] or "",
                          f["updated_at"]] for f in report["failed"]], 99))
    parts.append("<h2>Deferred</h2>")
    if report.get("oldest_deferred_since"):
        parts.append(f"<p>Oldest deferred since {escape(str(report['oldest_deferred_since']))} UTC.</p>")
    parts.append(_table(["document", "version", "site", "reason", "detail", "attempts", "next attempt (UTC)"],
                        [[f["document_id"], f["version"], _site(f["finess_geo"], names), f["reason"] or "",
                          f["detail"] or "", f["attempts"], f["next_attempt_at"]]
                         for f in report["deferred"]], 99))
    return parts


def to_html(report: dict, health=None, site_names: dict | None = None) -> str:
    names = site_names or {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dmp-connector status</title>"
             f"<style>{CSS}</style></head><body><h1>dmp-connector status</h1>",
             verdict(health) if health is not None else "",
             f"<p>Generated {escape(str(report['generated_at']))} UTC"
             + (f", since {escape(str(report['since']))}" if report.get("since") else "")
             + (f"; last successful run finished {escape(str(report['last_success_at']))} UTC"
                if report.get("last_success_at") else "; no successful run yet") + ".</p>"]
    parts += failed_block_lines(report, names)
    parts += ["<h2>Documents fed per day</h2>", chart(report.get("fed_per_day", [])),
              "<h2>Documents by state</h2>",
              _table(["state", "documents"], [[s, n] for s, n in report["documents_by_state"].items()]),
              "<h2>By reason</h2>",
              _table(["state", "reason", "documents"],
                     [[r["state"], r["reason"], r["count"]] for r in report["documents_by_reason"]], 2)]
    for key, label, title in INDICATOR_SECTIONS:
        rows = report.get("indicators", {}).get(key, [])
        parts.append(f'<h2 id="{label}">{escape(title)}</h2>')
        parts.append(_table([label, "fed", "eligible", "feeding rate", "skipped", "skipped by reason"],
                            [[(_site(r["key"], names) if key == "by_site" else r["key"] or "(none)"), r["fed"], r["eligible"], rate(r["feeding_rate"]), r["skipped_total"],
                              ", ".join(f"{k} {v}" for k, v in r["skipped"].items())] for r in rows]))
    parts.append("<h2>Last runs</h2>")
    parts.append(_table(["run", "mode", "status", "started (UTC)", "duration (s)", "counts"],
                        [[r["id"], r["mode"], r["status"], r["started_at"],
                          "running" if r.get("duration_s") is None else r["duration_s"],
                          ", ".join(f"{k} {v}" for k, v in (r["counts"] or {}).items())] for r in report["last_runs"]],
                        99))
    sections: list[list[str]] = []
    for line in intake_text(report.get("intake")):  # the intakes' sections, as the text report words them
        if line.startswith(" "):
            sections[-1].append(line[2:])
        else:
            sections.append([line.rstrip(":")])
    for title, *lines in sections:
        parts.append(f"<h2>{escape(title)}</h2>")
        parts.append("<pre>" + escape("\n".join(lines)) + "</pre>")
    parts.append(legend(report))
    parts.append("</body></html>")
    return "\n".join(parts)
