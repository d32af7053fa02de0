"""End to end over real mutual TLS: the sample store fed to the sandbox DMP by a real `run`."""

import sqlalchemy as sa
from click.testing import CliRunner

import delivery_harness as h
from connector import config, samples
from connector.actions import demo, run as run_action
from connector.cli import main
from connector.sandbox import report, server


def _folder(tmp_path, url="https://127.0.0.1:1/si-dmp-server/v2/services"):
    return demo.prepare_folder(tmp_path, url)


def test_samples_fed_once_each_and_skips_recorded(tmp_path):
    _folder(tmp_path)
    expected = samples.expected_decisions()
    eligible = {k for k, reason in expected.items() if reason is None}
    with server.serve(pki_dir=tmp_path / "pki", state_path=tmp_path / "sandbox.sqlite3") as sandbox:
        settings = config.load(_folder(tmp_path, sandbox.url))
        first = run_action.run(settings)
        second = run_action.run(settings)
    assert first.counts["fed"] == len(eligible) and first.counts["failed"] == 0
    assert second.counts["fed"] == 0 and second.skipped["ALREADY_FED"] == len(eligible)

    received = report.report(tmp_path / "sandbox.sqlite3")
    assert received["documents"] == len(eligible) == received["distinct_documents"]
    assert received["duplicate_deliveries"] == 0 and received["rejected"] == 0

    store = sa.create_engine(settings.store.url)
    with store.connect() as conn:
        fed = {(r.document_id, r.version): r for r in conn.execute(sa.text("SELECT * FROM dmp_feed_status"))}
    assert set(fed) == eligible
    assert all(r.status == "FED" and r.dmp_unique_id and r.fed_at for r in fed.values())
    with sa.create_engine(settings.ledger.url).connect() as conn:
        subjects = {r.rpps for r in conn.execute(sa.text("SELECT rpps FROM audit WHERE action = 'ITI-41'"))}
    assert subjects and all(len(s) == 11 for s in subjects)  # the RPPS, not the VIHF NameID's national id

    result = CliRunner().invoke(main, ["status", "--format", "json", "--config", str(tmp_path / "dmp-connector.toml")])
    import json

    status = json.loads(result.output)
    assert status["documents_by_state"]["FED"] == len(eligible)
    skipped = {r["reason"]: r["count"] for r in status["documents_by_reason"] if r["state"] == "SKIPPED"}
    want = {}
    for reason in expected.values():
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert skipped == want


def test_run_refuses_to_start_with_an_expired_certificate(tmp_path):
    import datetime as dt

    from connector.cli import EXIT_CERTIFICATE
    from connector.trust import certs
    from connector.trust.pki import create_test_pki, issue_bad_p12

    pki = create_test_pki(tmp_path / "pki")
    config = _folder(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    p12, password = issue_bad_p12(pki, tmp_path / "expired.p12", "auth_cli",
                                  not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1))
    h.write_config(config, **{"certificates.auth_cli": {"p12": str(p12), "password_file": str(password)}})
    certs.clear_cache()
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == EXIT_CERTIFICATE
    assert "expired.p12" in result.output and "expired" in result.output
    # Wrong password: the file is named, the password never.
    (tmp_path / "wrong.pass").write_text("not-the-password")
    h.write_config(config, **{"certificates.auth_cli": {"password_file": str(tmp_path / "wrong.pass")}})
    certs.clear_cache()
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == EXIT_CERTIFICATE and "auth_cli.p12" in result.output
    assert "not-the-password" not in result.output


def test_a_deferred_submission_whose_patient_opposed_meanwhile_is_withdrawn_not_sent(tmp_path):
    _folder(tmp_path)
    state = tmp_path / "sandbox.sqlite3"

    def configure(url):  # one attempt per run, deferred submissions due at once
        return config.load(h.write_config(_folder(tmp_path, url), url,
                                          **{"dmp.retry": {"in_run_attempts": 1, "deferred_min_minutes": 0.0}}))

    with server.serve(pki_dir=tmp_path / "pki", state_path=state, fast=True, fail_rate=1.0, seed=1) as down:
        first = run_action.run(configure(down.url))
    assert first.counts["deferred"] == sum(r is None for r in samples.expected_decisions().values())

    store = sa.create_engine(f"sqlite:///{tmp_path / 'store' / 'store.sqlite3'}")
    with store.begin() as conn:  # IPP-001 (4 eligible documents) opposes before the next run
        conn.execute(sa.text("UPDATE dmp_patient SET opposed_to_feeding = 1 WHERE patient_id = 'IPP-001'"))
    with server.serve(pki_dir=tmp_path / "pki", state_path=state, fast=True) as up:
        settings = configure(up.url)
        second = run_action.run(settings)
        got = report.report(state)
        assert second.counts["withdrawn"] == 4 and got["per_patient"] and got["documents"] == second.counts["fed"]
        with store.begin() as conn:
            conn.execute(sa.text("UPDATE dmp_patient SET opposed_to_feeding = 0 WHERE patient_id = 'IPP-001'"))
        third = run_action.run(settings)
    assert third.counts["fed"] == 4
    final = report.report(state)
    assert final["documents"] == final["distinct_documents"] == second.counts["fed"] + 4
    assert final["duplicate_deliveries"] == 0
