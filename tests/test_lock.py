"""One run at a time per instance: a second `dmp-connector run` started while one is working exits with the
documented code 5 and records nothing; the lock dies with its process (a kill -9 does not block the next run)."""

import pytest

import delivery_harness as h
from connector.cli import EXIT_LOCKED


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_second_concurrent_run_exits_locked_and_a_killed_run_does_not_block(tmp_path, database, request):
    eligible = set(h.synthetic_store(tmp_path / "store", 8, seed=9, per_patient=(1, 1)))
    folder = h.make_folder(tmp_path)
    ledger = {"instance": "same-name"}
    if database == "postgresql":
        ledger["url"] = request.getfixturevalue("pg_url")
    with h.sandbox(folder, latency_ms=700) as sb:  # a slow DMP and one sender keep the first run busy (> 5 s)
        folder.configure(sb.url, ledger=ledger, dmp={"max_in_flight": 1})
        if database == "postgresql":
            assert h.run_cli(folder.cfg, "db", "upgrade").returncode == 0
        url = folder.ledger_url
        first = h.Watched(folder.cfg, tmp_path / "first.log")
        try:
            assert first.wait_for(first.STARTED), "the first run ended before it started working"  # under its lock
            second = h.run_cli(folder.cfg)
            assert second.returncode == EXIT_LOCKED, (second.returncode, second.stderr[-2000:])
            assert "another" in second.stderr and "lock" in second.stderr
            assert f": run #1, pid {first.proc.pid} on " in second.stderr, "the message names the holder"
            assert first.proc.poll() is None  # the first one is still working, undisturbed
            assert h.ledger_rows(url, "SELECT count(*) AS n FROM runs")[0].n == 1  # the second recorded nothing
        finally:
            first.kill()
            first.finish(timeout=30)
        # The killed run's lock is gone with its process: the next run takes over and completes.
        h.run_until_done(folder.cfg)
    h.assert_exactly_once(folder, eligible)
