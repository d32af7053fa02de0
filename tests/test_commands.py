"""The commands and options no other test runs: `demo`, `daemon`, `samples create`, `sandbox pki|serve|report`,
replay's filters, `store.write_back = false`, `--log-json`, a second signal, an unreachable ledger, SUPERSEDED."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from click.testing import CliRunner

import delivery_harness as h
from connector import cli
from connector.cli import EXIT_UNAVAILABLE, main
from connector.ledger.repo import open_ledger
from connector.ledger.schema import PENDING


def _ok(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def test_samples_create_and_sandbox_pki_write_what_they_list(tmp_path):
    out = _ok("samples", "create", tmp_path / "samples")
    assert f"sample store written: {tmp_path / 'samples' / 'store.sqlite3'}" in out
    with sqlite3.connect(tmp_path / "samples" / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM dmp_document").fetchone()[0] > 0
    out = _ok("sandbox", "pki", tmp_path / "pki", "--finess-ej", "0B0999999")
    listed = dict(line.split(None, 1) for line in out.splitlines())
    assert set(listed) == {"ca_cert", "server_cert", "auth_cli_p12", "auth_cli_password_file", "sign_p12",
                           "sign_password_file"}
    from connector.trust.certs import load_credential
    from connector.config import CertificateSettings

    credential = load_credential(CertificateSettings(p12=Path(listed["auth_cli_p12"].strip()),
                                                     password_file=Path(listed["auth_cli_password_file"].strip())))
    assert credential.finess_ej() == "0B0999999"


def test_demo_command_feeds_the_samples_then_nothing_more(tmp_path):
    out = _ok("demo", tmp_path / "demo")
    assert "sandbox DMP listening on https://127.0.0.1:" in out
    fed = len(h.sample_eligible())
    assert " done in " in out and f"{fed} fed" in out  # the run's summary line
    again = _ok("demo", tmp_path / "demo")
    assert "0 fed" in again  # the ledger and the sandbox kept what was done


def _lines(stream, until: str, seen: list) -> None:
    """Read `stream` line by line (the process's own output: real synchronisation) until one contains `until`."""
    for line in stream:
        seen.append(line)
        if until in line:
            return
    raise AssertionError(f"ended before {until!r}: {''.join(seen)[-3000:]}")


def test_sandbox_serve_and_report_in_their_own_processes(tmp_path, pki):
    eligible = set(h.synthetic_store(tmp_path / "store", 3, seed=14))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    serve = subprocess.Popen(h.connector("sandbox", "serve", "--port", "0", "--pki", str(folder.path / "pki"),
                                         "--state", str(folder.sandbox_state), "--fast"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=h.connector_env())
    try:
        seen: list[str] = []
        _lines(serve.stdout, "sandbox DMP listening on ", seen)
        url = seen[-1].split("listening on ", 1)[1].strip()
        folder.configure(url)
        h.run_until_done(folder.cfg)
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    text = _ok("sandbox", "report", "--state", folder.sandbox_state)
    data = json.loads(_ok("sandbox", "report", "--state", folder.sandbox_state, "--format", "json"))
    assert data["documents"] == data["distinct_documents"] == len(eligible) and data["duplicate_deliveries"] == 0
    assert str(len(eligible)) in text
    h.assert_exactly_once(folder, eligible)


def test_daemon_runs_now_logs_json_and_stops_on_sigterm(tmp_path, pki):
    eligible = set(h.synthetic_store(tmp_path / "store", 3, seed=15))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        daemon = subprocess.Popen(h.connector("--log-json", "daemon", "--run-now", "--config", str(folder.cfg)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=h.connector_env())
        seen: list[str] = []
        try:
            _lines(daemon.stdout, '"run 1 done', seen)  # the first run, logged as a JSON line
        finally:
            daemon.send_signal(signal.SIGTERM)
            rest, _ = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, rest[-3000:]
    records = [json.loads(line) for line in seen + rest.splitlines() if line.strip()]  # every line is JSON
    assert any(r.get("message", "").startswith("run 1 done") for r in records)
    assert all({"level", "logger", "message"} <= r.keys() for r in records), records[:3]
    h.assert_exactly_once(folder, eligible)


def _failed_ledger(tmp_path) -> tuple[object, str]:
    """A ledger with FAILED documents of two sites and two runs, and a DEFERRED and a SKIPPED one."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url)
    first, second = ledger.start_run("run"), ledger.start_run("run")
    for did, site, run_id in (("A-1", "0B0999998", first), ("A-2", "0B0999998", second), ("B-1", "0B0999997", second)):
        ledger.record_decisions([dict(document_id=did, version=1, patient_id="P", state=PENDING, finess_geo=site)], run_id)
        ledger.fail_documents([(did, 1)], "CDA_INVALID", "x", run_id, "P", site)
    ledger.record_decisions([dict(document_id="S-1", version=1, patient_id="P", state="SKIPPED",
                                  reason="PATIENT_OPPOSED", finess_geo="0B0999998")], second)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE documents SET updated_at = '2026-01-01 00:00:00' WHERE document_id = 'A-1'")
    return ledger, url


def test_replay_filters_select_what_they_say(tmp_path, pki):
    ledger, url = _failed_ledger(tmp_path)
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    cfg = folder.configure(h.PLACEHOLDER_URL, ledger={"url": url})

    def would(*filters) -> set[str]:
        out = _ok("replay", "--dry-run", "--config", cfg, *filters)
        return {line.split()[2] for line in out.splitlines() if line.startswith("would requeue")}

    assert would() == {"A-1", "A-2", "B-1"}
    assert would("--site", "0B0999997") == {"B-1"}
    assert would("--since", "2026-06-01") == {"A-2", "B-1"}
    run_ids = [r.id for r in h.ledger_rows(url, "SELECT id FROM runs ORDER BY id")]
    assert would("--run", run_ids[0]) == {"A-1"}
    assert would("--document", "A-2") == {"A-2"}
    assert would("--all-states", "--site", "0B0999998") == {"A-1", "A-2", "S-1"}
    assert would("--reason", "CDA_INVALID", "--site", "0B0999998", "--run", run_ids[1]) == {"A-2"}


def test_write_back_off_leaves_the_store_untouched(tmp_path, pki):
    eligible = set(h.synthetic_store(tmp_path / "store", 3, seed=16))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url, store={"write_back": False})
        h.run_until_done(folder.cfg)
    h.assert_exactly_once(folder, eligible)
    with sqlite3.connect(folder.store_db) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "dmp_feed_status" not in tables


def test_an_unreachable_ledger_exits_4_in_one_line(tmp_path, pki):
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    folder.configure(h.PLACEHOLDER_URL, ledger={"url": "postgresql+psycopg://postgres@127.0.0.1:1/test"})
    for command in (("status",), ("run",), ("replay",)):
        result = h.run_cli(folder.cfg, *command)
        assert result.returncode == EXIT_UNAVAILABLE, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ledger")


def test_only_the_latest_version_in_the_store_is_fed_the_others_superseded(tmp_path, pki):
    keys = h.synthetic_store(tmp_path / "store", 2, seed=17, per_patient=(2, 2))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    did = keys[0][0]
    with sqlite3.connect(folder.store_db) as db:  # versions 2 and 3 of the first document, same file
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM dmp_document WHERE document_id = ? AND version = 1", (did,)).fetchone())
        for version in (2, 3):
            db.execute(f"INSERT INTO dmp_document ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       list({**row, "version": version}.values()))
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        h.run_until_done(folder.cfg)
    states = h.ledger_states(folder.ledger_url)
    assert states[(did, 1)] == states[(did, 2)] == ("SKIPPED", "SUPERSEDED")
    h.assert_exactly_once(folder, {(did, 3), keys[1]})


def test_a_second_signal_stops_at_once_and_the_next_run_settles(tmp_path, monkeypatch, pki):
    """The first signal asks for a clean stop; the second, before the run could finish its patient, stops it
    at once: the run is recorded failed, and the next run settles what was journaled, each document once."""
    import os

    from connector import logs

    eligible = set(h.synthetic_store(tmp_path / "store", 6, seed=18, per_patient=(1, 1)))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    original = logs.RunProgress.patient
    taken = []

    def two_signals(self, summary):
        taken.append(1)
        if len(taken) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            assert self.stop.wait(10)  # the handler ran (in this thread)
            os.kill(os.getpid(), signal.SIGTERM)  # raises KeyboardInterrupt here, from the handler
        return original(self, summary)

    with h.sandbox(folder) as sb:
        cfg = folder.configure(sb.url)
        monkeypatch.setattr(logs.RunProgress, "patient", two_signals)
        first = CliRunner().invoke(cli.main, ["run", "--config", str(cfg)])
        monkeypatch.undo()
        assert first.exit_code == 1 and isinstance(first.exception, (SystemExit, KeyboardInterrupt)), first.output
        assert len(taken) == 3
        runs = h.ledger_rows(folder.ledger_url, "SELECT status FROM runs")
        assert [r.status for r in runs] == ["failed"]
        assert h.received(folder)["documents"] < len(eligible)
        h.run_until_done(cfg)
    h.assert_exactly_once(folder, eligible)
