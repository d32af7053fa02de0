"""The daemon: the cron trigger in the configured time zone; the job fires when a fake clock reaches its time,
late within the misfire grace, coalesced after a long gap, missed beyond the grace; a locked ledger is logged
and skipped; SIGTERM during a real run stops the daemon and leaves a ledger the next run settles without
duplicates."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
from zoneinfo import ZoneInfo

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest

import delivery_harness as h
from conftest import make_settings
from connector import config, scheduler
from connector.config import ConfigError
from connector.runlock import AlreadyRunning

PARIS = ZoneInfo("Europe/Paris")


def test_trigger_follows_the_schedule_in_its_time_zone(tmp_path):
    cron = scheduler.trigger(make_settings(tmp_path))  # default "0 2 * * *", Europe/Paris
    after = cron.get_next_fire_time(None, dt.datetime(2026, 11, 20, 1, 30, tzinfo=PARIS))
    assert after == dt.datetime(2026, 11, 21, 1, 0, tzinfo=dt.UTC) - dt.timedelta(days=1)  # 02:00 Paris (UTC+1)
    assert cron.get_next_fire_time(None, dt.datetime(2026, 7, 1, 2, 30, tzinfo=PARIS)) == dt.datetime(
        2026, 7, 2, 0, 0, tzinfo=dt.UTC)  # next day, summer time (UTC+2)
    with pytest.raises(ConfigError, match="schedule.cron"):
        scheduler.trigger(make_settings(tmp_path, schedule={"cron": "every night"}))
    with pytest.raises(ConfigError, match="schedule.timezone"):
        scheduler.trigger(make_settings(tmp_path, schedule={"timezone": "Mars/Olympus"}))


class FakeClock:
    def __init__(self, start: dt.datetime):
        self.now = start
        clock = self

        class FakeDatetime(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.now.astimezone(tz) if tz else clock.now.replace(tzinfo=None)

        self.datetime = FakeDatetime


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(dt.datetime(2026, 11, 20, 1, 0, tzinfo=PARIS))
    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", fake.datetime)
    monkeypatch.setattr(apscheduler.executors.base, "datetime", fake.datetime)
    return fake


def test_job_fires_on_the_fake_clock(tmp_path, clock, caplog):
    fired: list[dt.datetime] = []
    ran = threading.Semaphore(0)

    def job():
        fired.append(clock.now)
        ran.release()

    sched = scheduler.build(make_settings(tmp_path), job=job)  # a BlockingScheduler, as the daemon uses
    thread = threading.Thread(target=sched.start, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if sched.running:
                break
            threading.Event().wait(0.02)
        job_ = sched.get_job(scheduler.JOB_ID)
        assert job_.next_run_time == dt.datetime(2026, 11, 20, 2, 0, tzinfo=PARIS)
        assert job_.misfire_grace_time == 3600 and job_.coalesce and job_.max_instances == 1

        def advance(to: dt.datetime) -> bool:
            clock.now = to
            sched.wakeup()
            return ran.acquire(timeout=3)

        assert not advance(dt.datetime(2026, 11, 20, 1, 59, 59, tzinfo=PARIS)) and fired == []
        assert advance(dt.datetime(2026, 11, 20, 2, 0, 1, tzinfo=PARIS))  # on time
        assert advance(dt.datetime(2026, 11, 21, 2, 50, tzinfo=PARIS))  # 50 min late: within the grace
        assert advance(dt.datetime(2026, 11, 24, 2, 10, tzinfo=PARIS))  # 3 nights missed: one run, not three
        assert not ran.acquire(timeout=0.5), "missed nights were coalesced into one run"
        with caplog.at_level(logging.WARNING, logger="connector.daemon"):
            assert not advance(dt.datetime(2026, 11, 25, 4, 30, tzinfo=PARIS))  # 2.5 h late: beyond the grace
            for _ in range(100):
                if "missed" in caplog.text:
                    break
                threading.Event().wait(0.02)
        assert "missed" in caplog.text
        assert len(fired) == 3
        assert sched.get_job(scheduler.JOB_ID).next_run_time == dt.datetime(2026, 11, 26, 2, 0, tzinfo=PARIS)
    finally:
        sched.shutdown(wait=True)
        thread.join(5)
    assert not thread.is_alive()


def test_locked_ledger_is_logged_and_skipped(tmp_path, monkeypatch, caplog):
    from connector.actions import run as run_action

    def locked(settings, **kw):
        raise AlreadyRunning("another dmp-connector run holds the lock")

    monkeypatch.setattr(run_action, "run", locked)
    with caplog.at_level(logging.INFO, logger="connector.daemon"):
        scheduler.run_once(make_settings(tmp_path))  # returns: the daemon keeps its schedule
    assert "scheduled run skipped: another dmp-connector run holds the lock" in caplog.text


def test_sigterm_during_a_run_stops_cleanly_and_the_next_run_settles(tmp_path, monkeypatch):
    from connector.actions import demo
    from connector.actions import run as run_action
    from connector.ledger.repo import open_ledger
    from connector.sandbox import report as sandbox_report
    from connector.sandbox import server as sandbox

    directory = tmp_path / "demo"
    demo.prepare_folder(directory, h.PLACEHOLDER_URL)
    server = sandbox.serve(pki_dir=directory / "pki", state_path=directory / "sandbox.sqlite3").start()
    patients = h.signal_at_patient(monkeypatch, signal.SIGTERM)
    try:
        settings = config.load(demo.prepare_folder(directory, server.url))
        before = signal.getsignal(signal.SIGTERM)
        watchdog = threading.Timer(120, os.kill, (os.getpid(), signal.SIGINT))  # never hang CI
        watchdog.daemon = True
        watchdog.start()
        scheduler.daemon(settings, run_now=True)  # returns once SIGTERM has stopped it
        watchdog.cancel()
        assert signal.getsignal(signal.SIGTERM) is before, "the daemon restores the signal handlers"
        ledger = open_ledger(settings.ledger.url)
        with ledger.engine.connect() as conn:
            first = conn.exec_driver_sql("SELECT status, counts FROM runs ORDER BY id").all()
        assert [r[0] for r in first] == ["interrupted"], "the interrupted run is recorded as such, not done"
        assert len(patients) == 2, "no new patient was taken after SIGTERM"
        monkeypatch.undo()
        summary = run_action.run(settings)  # the next run settles what was left and feeds the rest
        with ledger.engine.connect() as conn:
            states = dict(conn.exec_driver_sql("SELECT state, count(*) FROM documents GROUP BY state").all())
            fed_uids = conn.exec_driver_sql("SELECT count(DISTINCT unique_id) FROM documents WHERE state='FED'").scalar()
    finally:
        server.stop()
    assert states.get("SUBMITTING", 0) == 0 and states.get("PENDING", 0) == 0
    assert states["FED"] == 9 == fed_uids  # every eligible sample fed, exactly once
    received = sandbox_report.report(directory / "sandbox.sqlite3")
    assert received["distinct_documents"] == 9 and received["duplicates"] == [] and received["duplicate_deliveries"] == 0
    assert 0 < summary.counts["fed"] < 9, "the first run fed part of the samples, the second the rest"


def test_a_scheduled_run_that_needs_a_human_is_logged_as_such(monkeypatch, caplog, tmp_path):
    """The daemon has no exit code to give: its log line says the code the run would have had, and why, at
    WARNING (not a Python dict of counts at INFO)."""
    from connector.actions import run as run_action

    def failing_run(settings, progress=None):
        summary = run_action.Summary(run_id=3, mode="run")
        summary.add("failed", 2)
        return summary

    monkeypatch.setattr(run_action, "run", failing_run)
    with caplog.at_level(logging.INFO, logger="connector.daemon"):
        scheduler.run_once(None)
    (record,) = [r for r in caplog.records if r.name == "connector.daemon"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "scheduled run 3 ended with code 1 (2 document(s) failed)"
