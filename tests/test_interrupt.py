"""`dmp-connector run` stopped by Ctrl-C (SIGINT) or `systemctl stop` (SIGTERM): no new patient is taken,
what is in flight finishes and is recorded, the exit code says so, and the next run feeds the rest once."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from click.testing import CliRunner

import delivery_harness as h
from connector import cli, config
from connector.actions import demo
from connector.ledger.repo import open_ledger
from connector.sandbox import report as sandbox_report
from connector.sandbox import server as sandbox


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_cleanly_and_the_next_run_feeds_the_rest(tmp_path, monkeypatch, signum):
    directory = tmp_path / "demo"
    demo.prepare_folder(directory, h.PLACEHOLDER_URL)
    server = sandbox.serve(pki_dir=directory / "pki", state_path=directory / "sandbox.sqlite3").start()
    patients = h.signal_at_patient(monkeypatch, signum)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        config_path = demo.prepare_folder(directory, server.url)
        watchdog = threading.Timer(120, os.kill, (os.getpid(), signal.SIGKILL))  # never hang CI
        watchdog.daemon = True
        watchdog.start()
        first = CliRunner().invoke(cli.main, ["run", "--config", str(config_path)])
        watchdog.cancel()
        assert first.exit_code == cli.EXIT_ATTENTION, first.output
        assert "run interrupted" in first.output
        assert {s: signal.getsignal(s) for s in before} == before, "the signal handlers are restored"
        assert len(patients) == 2, "no new patient was taken after the signal"
        ledger = open_ledger(config.load(config_path).ledger.url)
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT status FROM runs").scalars().all() == ["interrupted"]
            fed_first = conn.exec_driver_sql("SELECT count(*) FROM documents WHERE state='FED'").scalar()
        monkeypatch.undo()
        second = CliRunner().invoke(cli.main, ["run", "--config", str(config_path)])
        # exit 1 only for the sample store's deliberate SITE_UNKNOWN and TYPE_NOT_ALLOWED documents, seen anew
        assert second.exit_code == cli.EXIT_ATTENTION, second.output
        assert "needs a human: 1 document(s) newly skipped SITE_UNKNOWN" in second.output
        with ledger.engine.connect() as conn:
            states = dict(conn.exec_driver_sql("SELECT state, count(*) FROM documents GROUP BY state").all())
    finally:
        server.stop()
    assert 0 < fed_first < 9, "the first run fed what it had in flight, not everything"
    assert states["FED"] == 9 and states.get("SUBMITTING", 0) == 0 and states.get("PENDING", 0) == 0
    received = sandbox_report.report(directory / "sandbox.sqlite3")
    assert received["distinct_documents"] == 9 and received["duplicate_deliveries"] == 0
