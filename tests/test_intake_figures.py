"""Issue 19 item 6: the HL7 intake's figures (messages accepted, resent, refused by code; ACK latency) and its
listeners' heartbeat, written to the store by the listener, read by `status` in every format, `status --check`
(a listener down, refusals rising) and Prometheus."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from connector import config
from connector.cli import main
from connector.config import IntakeHl7Settings
from connector.ledger.repo import open_ledger
from delivery_harness import NO_PKI, write_config
from hl7_client import MDM_INIT, RunningListener, example, msa, send

NOT_HL7 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def intake(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    running = RunningListener(IntakeHl7Settings(port=0, read_timeout=20, idle_timeout=60), store_url)
    cfg = write_config(tmp_path / "connector.toml", store={"url": store_url},
                       **{"": {"state_dir": str(tmp_path / "state")}}, **NO_PKI)
    open_ledger(config.load(cfg).ledger.url).engine.dispose()  # status reads a ledger (no run needed here)
    try:
        yield running, cfg, store_url
    finally:
        running.stop()


def status(cfg, *args):
    return CliRunner().invoke(main, ["status", *args, "--config", str(cfg)])


def test_status_shows_the_intakes_figures_in_every_format_and_prometheus(intake, tmp_path):
    running, cfg, store_url = intake
    assert msa(send(running.address, example(MDM_INIT))) == ["AA", "015"]
    assert msa(send(running.address, example(MDM_INIT))) == ["AA", "015"]  # a resend
    assert msa(send(running.address, NOT_HL7))[0] == "AE"
    before = json.loads(status(cfg, "--format", "json").output)["intake"]  # the listener's row since its start
    assert before["total"]["messages"] == 0 and len(before["listeners"]) == 1  # counted, not yet written
    running.listener.recorder.flush()  # what the listener's timer does every figures_interval_seconds

    report = json.loads(status(cfg, "--format", "json").output)
    hour = report["intake"]["this_hour"]
    assert (hour["messages"], hour["accepted"], hour["resends"], hour["refused"]) == (3, 1, 1, 1)
    assert list(hour["refused_by_code"]) == ["AE 100"]
    assert sum(hour["ack_latency_ms_buckets"].values()) <= 3 * len(hour["ack_latency_ms_buckets"])
    assert hour["ack_latency_ms_p99"] is not None and report["intake"]["total"]["messages"] == 3
    [listener] = report["intake"]["listeners"]
    assert listener["instance"].endswith(f":{running.address[1]}") and listener["stopped_at"] is None

    text = status(cfg).output
    assert "HL7 intake:" in text and "3 messages: 1 accepted, 1 resends, 1 refused (AE 100 1)" in text
    assert "intake,this_hour,accepted,1" in status(cfg, "--format", "csv").output
    assert "<h2>HL7 intake</h2>" in status(cfg, "--format", "html").output
    prom = tmp_path / "dmp.prom"
    status(cfg, "--prometheus", str(prom))
    metrics = prom.read_text()
    assert 'dmp_connector_intake_messages_total{outcome="accepted"} 1' in metrics
    assert 'dmp_connector_intake_messages_total{outcome="AE 100"} 1' in metrics
    assert 'dmp_connector_intake_ack_latency_seconds_bucket{le="+Inf"} 3' in metrics
    assert 'dmp_connector_intake_listener_running{instance="' in metrics

    # a listener running: nothing to say about the intake
    assert "HL7 intake" not in status(cfg, "--check").output


def test_check_says_a_listener_down_and_refusals_rising(intake):
    running, cfg, store_url = intake
    for _ in range(5):  # monitoring.intake_refused_warning (5) this hour, none the hour before
        assert msa(send(running.address, NOT_HL7))[0] == "AE"
    running.listener.recorder.flush()
    check = status(cfg, "--check")
    assert "WARNING: HL7 intake: 5 message(s) refused this hour (AE 100 5), 0 the hour before" in check.output

    # its heartbeat stopped an hour ago without a clean stop: the process died
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE dmp_intake_listener SET seen_at = :t"),
                     dict(t=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=1)))
    engine.dispose()
    check = status(cfg, "--check")
    assert check.exit_code == 2
    assert "CRITICAL: HL7 intake listener " in check.output and "down: not seen for 60 minutes" in check.output


def test_a_clean_stop_is_recorded_and_said(intake):
    running, cfg, _ = intake
    assert msa(send(running.address, example(MDM_INIT))) == ["AA", "015"]
    running.stop()  # flushes, then records the stop
    report = json.loads(status(cfg, "--format", "json").output)
    assert report["intake"]["total"]["accepted"] == 1 and report["intake"]["listeners"][0]["stopped_at"]
    assert "WARNING: HL7 intake listener " in status(cfg, "--check").output
    running.stop = lambda: None  # stopped already


def test_a_store_out_of_reach_is_said_not_alerted(tmp_path):
    cfg = write_config(tmp_path / "connector.toml", store={"url": "postgresql+psycopg://x@127.0.0.1:1/none"},
                       **{"": {"state_dir": str(tmp_path / "state")}}, **NO_PKI)
    open_ledger(config.load(cfg).ledger.url).engine.dispose()
    assert "HL7 intake: figures unavailable (store unreachable: OperationalError)" in status(cfg).output
    assert "intake" not in status(cfg, "--check").output.lower()
