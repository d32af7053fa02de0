"""status: exact figures of a ledger built by the test, in every format; --check exit codes; Prometheus textfile;
every query of the report reads an index (never the table), so it stays fast on a million documents."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import lxml.html
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import delivery_harness as h
from connector.actions import status
from connector import __version__
from connector.cli import main
from connector.config import MonitoringSettings
from connector.ledger.repo import open_ledger, utcnow
from connector.ledger.schema import documents, runs
from connector.report import prometheus

A, B = "0B0999998", "0B0999997"
NOW = dt.datetime(2026, 11, 20, 12, 0)
D18, D19, D31 = dt.datetime(2026, 11, 18, 2, 10), dt.datetime(2026, 11, 19, 2, 10), dt.datetime(2026, 10, 31, 2, 10)


def _doc(n, site, type_code, state, seen, reason=None, fed=None, **kw):
    # Every row has every key: an executemany INSERT takes its columns from the first row.
    row = dict(document_id=f"DOC-{n:03d}", version=1, patient_id=f"IPP-{n:03d}", finess_geo=site, type_code=type_code,
               state=state, reason=reason, first_seen_at=seen, updated_at=seen, fed_at=fed, detail=None, attempts=0,
               first_attempt_at=None, next_attempt_at=None)
    row.update(kw)
    return row


ROWS = [
    _doc(1, A, "11490-0", "FED", D18, fed=D18 + dt.timedelta(minutes=5)),
    _doc(2, A, "11490-0", "FED", D18, fed=D18 + dt.timedelta(minutes=6)),
    _doc(3, A, "11490-0", "FED", D18, fed=D19),
    _doc(4, A, "11488-4", "SKIPPED", D18, "INS_NOT_QUALIFIED"),
    _doc(5, A, "11488-4", "SKIPPED", D18, "INS_NOT_QUALIFIED"),
    _doc(6, A, "11488-4", "DEFERRED", D19, "TRANSIENT", attempts=3, first_attempt_at=D19,
         next_attempt_at=dt.datetime(2026, 11, 20, 3, 0)),
    _doc(7, B, "11490-0", "FED", D19, fed=dt.datetime(2026, 11, 20, 2, 3)),
    _doc(8, B, "11490-0", "FAILED", D19, "XDSUnknownPatientId", detail="patient unknown to the DMP",
         updated_at=D19 + dt.timedelta(minutes=1)),
    _doc(9, B, "11490-0", "PENDING", D31),
    _doc(10, B, "18748-4", "SKIPPED", D31, "PATIENT_OPPOSED"),
]
RUNS = [
    dict(mode="run", status="done", started_at=dt.datetime(2026, 11, 19, 2, 0), finished_at=dt.datetime(2026, 11, 19, 2, 5),
         counts={"fed": 1, "deferred": 1}),
    dict(mode="run", status="failed", started_at=dt.datetime(2026, 11, 20, 2, 0),
         finished_at=dt.datetime(2026, 11, 20, 2, 1), counts={"fed": 1}),
]


def _ledger(path, docs=ROWS, run_rows=RUNS):
    ledger = open_ledger(f"sqlite:///{path}")
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(documents), docs)
        if run_rows:
            conn.execute(sa.insert(runs), run_rows)
    return ledger


@pytest.fixture
def report(tmp_path):
    return status.collect(_ledger(tmp_path / "ledger.sqlite3"), now=NOW)


def _by_key(rows):
    return {r["key"]: (r["fed"], r["eligible"], r["feeding_rate"], r["skipped"]) for r in rows}


def test_figures(report):
    assert report["documents_by_state"] == {"PENDING": 1, "SUBMITTING": 0, "FED": 4, "DEFERRED": 1, "FAILED": 1, "SKIPPED": 3}
    assert {(r["state"], r["reason"]): r["count"] for r in report["documents_by_reason"]} == {
        ("SKIPPED", "INS_NOT_QUALIFIED"): 2, ("SKIPPED", "PATIENT_OPPOSED"): 1,
        ("DEFERRED", "TRANSIENT"): 1, ("FAILED", "XDSUnknownPatientId"): 1}
    ind = report["indicators"]
    assert _by_key(ind["by_site"]) == {A: (3, 4, 0.75, {"INS_NOT_QUALIFIED": 2}), B: (1, 3, 0.3333, {"PATIENT_OPPOSED": 1})}
    assert _by_key(ind["by_type"]) == {"11490-0": (4, 6, 0.6667, {}), "11488-4": (0, 1, 0.0, {"INS_NOT_QUALIFIED": 2}),
                                       "18748-4": (0, 0, None, {"PATIENT_OPPOSED": 1})}
    assert _by_key(ind["by_day"]) == {"2026-10-31": (0, 1, 0.0, {"PATIENT_OPPOSED": 1}),
                                      "2026-11-18": (3, 3, 1.0, {"INS_NOT_QUALIFIED": 2}),
                                      "2026-11-19": (1, 3, 0.3333, {})}
    assert _by_key(ind["by_month"]) == {"2026-10": (0, 1, 0.0, {"PATIENT_OPPOSED": 1}),
                                        "2026-11": (4, 6, 0.6667, {"INS_NOT_QUALIFIED": 2})}
    assert report["fed_per_day"] == [{"day": "2026-11-18", "fed": 2}, {"day": "2026-11-19", "fed": 1},
                                     {"day": "2026-11-20", "fed": 1}]
    assert report["oldest_deferred_since"] == D19
    assert report["failed_total"] == 1
    assert [(f["document_id"], f["reason"]) for f in report["failed"]] == [("DOC-008", "XDSUnknownPatientId")]
    assert [(f["document_id"], f["next_attempt_at"]) for f in report["deferred"]] == [
        ("DOC-006", dt.datetime(2026, 11, 20, 3, 0))]
    assert [(r["id"], r["status"], r["duration_s"]) for r in report["last_runs"]] == [(2, "failed", 60.0), (1, "done", 300.0)]
    assert report["last_success_at"] == dt.datetime(2026, 11, 19, 2, 5)


def test_since_restricts_documents_runs_and_feeds(tmp_path):
    report = status.collect(_ledger(tmp_path / "l.sqlite3"), since=dt.date(2026, 11, 19), now=NOW)
    assert report["documents_by_state"] == {"PENDING": 0, "SUBMITTING": 0, "FED": 1, "DEFERRED": 1, "FAILED": 1, "SKIPPED": 0}
    assert _by_key(report["indicators"]["by_day"]) == {"2026-11-19": (1, 3, 0.3333, {})}
    assert [r["id"] for r in report["last_runs"]] == [2, 1]  # both started on or after 2026-11-19
    assert report["fed_per_day"] == [{"day": "2026-11-19", "fed": 1}, {"day": "2026-11-20", "fed": 1}]


def test_text(report):
    text = status.render(report, "text")
    assert "  FED         4" in text and "  SKIPPED     3" in text
    assert f"  {A}        3 / 4         75.0%  skipped 2 (INS_NOT_QUALIFIED 2)" in text
    assert f"  {B}        1 / 3         33.3%  skipped 1 (PATIENT_OPPOSED 1)" in text
    assert "  2026-11          4 / 6         66.7%" in text
    assert "DOC-008 v1  XDSUnknownPatientId" in text
    assert "Oldest deferred since: 2026-11-19 02:10:00 UTC" in text
    bare = {**report, "failed": [{**report["failed"][0], "detail": None}],
            "last_runs": [{**report["last_runs"][0], "counts": {}}]}  # an empty detail, a run that counted nothing
    assert all(line == line.rstrip() for line in status.render(bare, "text").splitlines()), "no trailing spaces"


def test_json(report):
    data = json.loads(status.render(report, "json"))
    assert data["documents_by_state"]["FED"] == 4
    assert data["indicators"]["by_site"][0] == {"key": B, "fed": 1, "eligible": 3, "skipped_total": 1,
                                                "skipped": {"PATIENT_OPPOSED": 1}, "feeding_rate": 0.3333}
    assert data["last_success_at"] == "2026-11-19T02:05:00+00:00"  # the ledger's UTC, with its zone


def test_csv(report):
    rows = list(csv.reader(io.StringIO(status.render(report, "csv"))))
    assert rows[0] == ["section", "key", "metric", "value"]
    cells = {(s, k, m): v for s, k, m, v in rows[1:]}
    assert cells[("state", "FED", "documents")] == "4"
    assert cells[("reason", "INS_NOT_QUALIFIED", "SKIPPED")] == "2"
    assert cells[("site", A, "fed")] == "3" and cells[("site", A, "eligible")] == "4"
    assert cells[("site", A, "feeding_rate")] == "0.75"
    assert cells[("site", B, "skipped:PATIENT_OPPOSED")] == "1"
    assert cells[("type", "18748-4", "feeding_rate")] == ""
    assert cells[("month", "2026-11", "fed")] == "4"
    assert cells[("fed_per_day", "2026-11-18", "fed")] == "2"
    assert cells[("failed", "DOC-008 v1", "XDSUnknownPatientId")] == "2026-11-19 02:11:00+00:00"
    assert cells[("run", "1", "duration_s")] == "300.0"


def test_html_is_self_contained_with_chart_and_figures(report):
    page = status.render(report, "html")
    doc = lxml.html.document_fromstring(page)
    assert not doc.xpath("//script|//link|//img|//*[@src]|//*[@href]"), "no external asset"
    bars = doc.xpath("//svg[@id='fed-per-day']//rect")
    assert [(b.get("data-day"), b.get("data-fed")) for b in bars] == [
        ("2026-11-18", "2"), ("2026-11-19", "1"), ("2026-11-20", "1")]
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] == max(heights) and heights[1] == pytest.approx(heights[0] / 2)
    site_rows = {tr.xpath("./td")[0].text_content(): [td.text_content() for td in tr.xpath("./td")]
                 for tr in doc.xpath("//h2[@id='site']/following-sibling::table[1]//tr[td]")}
    assert site_rows[A][:5] == [A, "3", "4", "75.0%", "2"]
    assert site_rows[B][:5] == [B, "1", "3", "33.3%", "1"]
    assert "DOC-008" in doc.text_content() and "XDSUnknownPatientId" in doc.text_content()


def test_html_headline_is_the_check_verdict_failures_first_site_names_axes_and_legend(report):
    """A manager's page: the verdict of `status --check` with its reasons on top, failed and deferred documents
    before the figures, site names next to FINESS numbers, the chart's axes with dates and values, and the
    reason codes in plain words."""
    health = status.health(report, now=NOW)
    page = status.render(report, "html", health=health, site_names={A: "Hôpital Sainte-Anne", B: "Clinique de l'Étang"})
    doc = lxml.html.document_fromstring(page)
    (verdict,) = doc.xpath("//section[@id='verdict']")
    assert verdict.get("data-level") == "CRITICAL" == status.LEVELS[health.level]
    assert [li.text_content() for li in verdict.xpath(".//li")] == [
        f"{status.LEVELS[level]}: {why}" for level, why in health.reasons]
    headings = [h.text_content() for h in doc.xpath("//h2")]
    assert headings.index("Failed (1)") < headings.index("Deferred") < headings.index("Documents fed per day")
    failed_row = [td.text_content() for td in doc.xpath("//h2[.='Failed (1)']/following-sibling::table[1]//tr[td]")[0]]
    assert failed_row[:4] == ["DOC-008", "1", f"{B} Clinique de l'Étang", "XDSUnknownPatientId"]
    site_cells = [tr.xpath("./td")[0].text_content() for tr in doc.xpath("//h2[@id='site']/following-sibling::table[1]//tr[td]")]
    assert f"{A} Hôpital Sainte-Anne" in site_cells
    svg = doc.xpath("//svg[@id='fed-per-day']")[0]
    assert [t.text for t in svg.xpath(".//text[@class='x-axis']")] == ["2026-11-18", "2026-11-19", "2026-11-20"]
    assert [t.text for t in svg.xpath(".//text[@class='y-axis']")] == ["2 documents", "0"]
    legend = {tr.xpath("./td")[0].text_content(): tr.xpath("./td")[1].text_content()
              for tr in doc.xpath("//h2[@id='legend']/following-sibling::table[1]//tr[td]")}
    assert legend["INS_NOT_QUALIFIED"].startswith("the patient's identity is not qualified")
    assert legend["XDSUnknownPatientId"] == "the patient has no DMP, or closed it"
    assert set(legend) == {"INS_NOT_QUALIFIED", "PATIENT_OPPOSED", "TRANSIENT", "XDSUnknownPatientId"}


def test_prometheus_textfile(report, tmp_path):
    (tmp_path / "textfile").mkdir()
    path = tmp_path / "textfile" / "dmp.prom"
    status.write_prometheus(report, path)
    lines = path.read_text().splitlines()
    samples = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in lines if not line.startswith("#")}
    assert samples['dmp_connector_documents{state="FED"}'] == "4"
    assert samples[f'dmp_connector_fed_documents{{site="{A}"}}'] == "3"
    assert "# TYPE dmp_connector_fed_documents gauge" in lines and not any(" counter" in line for line in lines)
    assert samples[f'dmp_connector_build_info{{version="{__version__}"}}'] == "1"
    assert samples["dmp_connector_oldest_deferred_age_seconds"] == str(int((NOW - D19).total_seconds()))
    assert samples["dmp_connector_write_back_failures"] == "0"
    assert samples["dmp_connector_last_run_status"] == "2"  # the last run failed
    assert samples["dmp_connector_last_run_timestamp_seconds"] == str(
        int(dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC).timestamp()))
    assert samples[f'dmp_connector_feeding_ratio{{site="{B}"}}'] == "0.3333"
    assert samples["dmp_connector_failed_documents"] == "1"
    assert samples["dmp_connector_last_success_timestamp_seconds"] == str(
        int(dt.datetime(2026, 11, 19, 2, 5, tzinfo=dt.UTC).timestamp()))
    assert [p.name for p in path.parent.iterdir()] == ["dmp.prom"], "no temporary file left"
    assert prometheus.to_prometheus(report).endswith("\n")


def test_health_levels_and_reasons(report):
    found = status.health(report, now=NOW)
    assert found.level == status.CRITICAL
    assert found.reasons == [
        (status.CRITICAL, "run #2 failed: see its log"),
        (status.WARNING, "1 document(s) FAILED and need a human (`dmp-connector status`, then replay)"),
        (status.WARNING, "documents DEFERRED for 34 hours (first tried 2026-11-19 02:10 UTC)"),
        (status.WARNING, "last successful run finished 2026-11-19 02:05 UTC, more than 26 hours ago")]
    relaxed = MonitoringSettings(deferred_warning_hours=48, deferred_critical_hours=72, last_success_warning_hours=48)
    assert [why for _, why in status.health(report, relaxed, now=NOW).reasons][1:] == [
        "1 document(s) FAILED and need a human (`dmp-connector status`, then replay)"]
    line = found.status_line()
    assert line.startswith("DMP-CONNECTOR CRITICAL - run #2 failed: see its log; 1 document(s) FAILED")
    perf = line.split(" | ", 1)[1].split()
    assert "failed=1;1;;0" in perf and "deferred=1;;;0" in perf and "oldest_deferred_age=121800s;86400;259200;0" in perf
    assert "\n" not in line


def test_health_raises_every_cause_a_human_must_see(tmp_path):
    """DMP unreachable or TLS refused in the last run, stranded SUBMITTING, certificates expiring (30 / 7 days),
    SITE_UNKNOWN / TYPE_NOT_ALLOWED skips in the last run, write-back failures: each names its cause."""
    now = utcnow()
    ledger = _ledger(tmp_path / "l.sqlite3", [
        _doc(1, A, "11490-0", "SUBMITTING", now - dt.timedelta(hours=5), updated_at=now - dt.timedelta(hours=5)),
        _doc(2, A, "11490-0", "FED", now, fed=now)], [
        dict(mode="run", status="done", started_at=now - dt.timedelta(hours=2), finished_at=now - dt.timedelta(hours=2),
             counts={"fed": 1}, message=None),
        dict(mode="run", status="unreachable", started_at=now, finished_at=now, counts={"deferred": 3, "skipped:SITE_UNKNOWN": 9,
                                                                                   "newly_skipped:SITE_UNKNOWN": 7},
             message="not sent: ConnectionError: [Errno 111] Connection refused")])
    ledger.record_certificates({"auth_cli": now + dt.timedelta(days=4), "sign": now + dt.timedelta(days=20)})
    ledger.write_back_failed([("DOC-002", 1)], "InsufficientPrivilege: permission denied for table dmp_feed_status")
    found = status.health(status.collect(ledger), now=now)
    assert found.level == status.CRITICAL
    assert [(status.LEVELS[level], why) for level, why in found.reasons] == [
        ("CRITICAL", "DMP unreachable in run #2: not sent: ConnectionError: [Errno 111] Connection refused"),
        ("CRITICAL", f"certificate auth_cli expires in 4 day(s) ({now + dt.timedelta(days=4):%Y-%m-%d} UTC)"),
        ("WARNING", "1 document(s) SUBMITTING for 5.0 hours: no run settled them (the next run will, by ITI-18)"),
        ("WARNING", f"certificate sign expires in 20 day(s) ({now + dt.timedelta(days=20):%Y-%m-%d} UTC)"),
        ("WARNING", "run #2 newly skipped 7 document(s) SITE_UNKNOWN (their FINESS géo is not in structure.sites: a typo?)"),
        ("WARNING", f"1 dmp_feed_status row(s) not written since {now:%Y-%m-%d %H:%M} UTC (`dmp-connector write-back`)")]
    assert "auth_cli_expiry_days=4.0;30:;7:" in found.status_line()
    metrics = prometheus.to_prometheus(status.collect(ledger))
    assert f'dmp_connector_certificate_expiry_timestamp_seconds{{purpose="auth_cli"}} ' \
           f'{int((now + dt.timedelta(days=4)).replace(tzinfo=dt.UTC).timestamp())}' in metrics
    assert "dmp_connector_write_back_failures 1" in metrics and "dmp_connector_last_run_status 4" in metrics
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.id == 2).values(status="tls_refused", message="not sent: SSLError"))
    assert status.health(status.collect(ledger), now=now).reasons[0] == (
        status.CRITICAL, "TLS with the DMP refused in run #2 (a configuration problem): not sent: SSLError")
    quiet = MonitoringSettings(attention_skip_reasons=(), certificate_warning_days=3, certificate_critical_days=1,
                               submitting_stranded_minutes=600)
    assert [why for _, why in status.health(status.collect(ledger), quiet, now=now).reasons] == [
        "TLS with the DMP refused in run #2 (a configuration problem): not sent: SSLError",
        f"1 dmp_feed_status row(s) not written since {now:%Y-%m-%d %H:%M} UTC (`dmp-connector write-back`)"]


def _config(tmp_path):
    return str(h.write_config(tmp_path / "c.toml", **h.NO_PKI, ledger={"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}))


def test_check_exit_codes(tmp_path):
    """status --check as a monitoring plugin: one status line on stdout with perfdata, 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN (the ledger cannot be read)."""
    recent = utcnow() - dt.timedelta(hours=3)
    healthy = [r for r in ROWS if r["state"] not in ("FAILED", "DEFERRED")]
    ledger = _ledger(tmp_path / "ledger.sqlite3", healthy,
                     [dict(mode="run", status="done", started_at=recent, finished_at=recent, counts={})])
    runner, config = CliRunner(), _config(tmp_path)
    ok = runner.invoke(main, ["status", "--config", config, "--check", "--prometheus", str(tmp_path / "m.prom")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[0].startswith("DMP-CONNECTOR OK - feeding normally | failed=0;1;;0 ")
    assert "Documents by state" not in ok.output
    assert (tmp_path / "m.prom").is_file()
    stale = runner.invoke(main, ["status", "--config", config, "--check", "--max-age-hours", "2"])
    assert stale.exit_code == 1 and stale.stdout.startswith("DMP-CONNECTOR WARNING - last successful run finished")
    assert "more than 2 hours ago" in stale.stdout
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(documents), [r for r in ROWS if r["state"] == "FAILED"])
    failed = runner.invoke(main, ["status", "--config", config, "--check", "--format", "html"])
    assert failed.exit_code == 1 and "FAILED and need a human" in failed.output and "<svg" in failed.output
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(runs).values(mode="run", status="unreachable", started_at=utcnow(), finished_at=utcnow(),
                                            counts={}, message="not sent: ConnectionError: refused"))
    down = runner.invoke(main, ["status", "--config", config, "--check"])
    assert down.exit_code == 2 and down.stdout.startswith("DMP-CONNECTOR CRITICAL - DMP unreachable in run #2: ")
    for fmt in ("text", "json", "csv", "html"):
        assert runner.invoke(main, ["status", "--config", config, "--format", fmt, "--since", "2026-11-19"]).exit_code == 0
    (tmp_path / "ledger.sqlite3").unlink()
    gone = runner.invoke(main, ["status", "--config", config, "--check"])
    assert gone.exit_code == 3 and gone.stdout.startswith("DMP-CONNECTOR UNKNOWN - ")


def _plans(ledger, **kw) -> list[tuple[str, list[str]]]:
    """(statement, SQLite query plan details) of every report query on the documents table."""
    plans = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "documents" in statement:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plans.append((statement, [row[-1] for row in plan]))

    sa.event.listen(ledger.engine, "before_cursor_execute", explain)
    try:
        status.collect(ledger, **kw)
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", explain)
    return plans


def test_every_query_reads_an_index(tmp_path):
    """On SQLite, no report query scans the documents table itself (the indexes of migrations 0002/0003 cover
    them), none sorts, and the whole ledger is read in one pass: every other query is a search on an index."""
    ledger = _ledger(tmp_path / "ledger.sqlite3")
    for kw in ({}, {"since": dt.date(2026, 11, 19)}):
        plans = _plans(ledger, **kw)
        assert plans
        for statement, details in plans:
            assert not any(d.startswith("SCAN documents") and "INDEX" not in d for d in details), (statement, details)
            assert not any("TEMP B-TREE FOR GROUP BY" in d for d in details), (statement, details)
        scans = [details for _, details in plans if any(d.startswith("SCAN documents") for d in details)]
        assert scans == ([] if kw else [["SCAN documents USING COVERING INDEX ix_documents_cells"]]), scans


@pytest.mark.parametrize("since", [None, dt.date(2026, 11, 19)])
def test_postgresql_gives_the_same_figures(tmp_path, pg_url, since):
    """The one-pass query groups on date(): a str on SQLite, a date on PostgreSQL; the report is the same."""
    pg = open_ledger(pg_url, auto_migrate=True)
    with pg.engine.begin() as conn:
        conn.execute(sa.insert(documents), ROWS)
        conn.execute(sa.insert(runs), RUNS)
    expected = status.collect(_ledger(tmp_path / "ledger.sqlite3"), since=since, now=NOW)
    assert {**status.collect(pg, since=since, now=NOW), "ledger": None} == {**expected, "ledger": None}
    pg.engine.dispose()
