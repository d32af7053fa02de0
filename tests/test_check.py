"""`dmp-connector check`: one line per check, non-zero exit with an actionable message on any failure."""

import datetime as dt

from click.testing import CliRunner

from connector.actions import demo
from connector.cli import EXIT_ATTENTION, EXIT_CERTIFICATE, main
from connector.sandbox import server
from connector.trust import certs
from connector.trust.pki import create_test_pki, issue_bad_p12
import delivery_harness as h


def _check(config):
    certs.clear_cache()
    return CliRunner().invoke(main, ["check", "--config", str(config)])


def test_check_passes_against_the_sandbox_then_names_each_problem(tmp_path):
    pki = create_test_pki(tmp_path / "pki")
    config = demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    with server.serve(pki_dir=tmp_path / "pki", state_path=tmp_path / "sandbox.sqlite3", fast=True) as sandbox:
        config = demo.prepare_folder(tmp_path, sandbox.url)
        ok = _check(config)
        assert ok.exit_code == 0, ok.output
        assert "mutual TLS handshake ok" in ok.output and "[FAIL]" not in ok.output
        assert ("codes     ASS_X16 20240927120000, JDV_J57 20230922120000, JDV_J59 20260928120000; default activity 97 "
                "(contentTypeCode 97 Type d'activité indifférencié); types outside ASS_X16: refused") in ok.output

        # An expired ORG SIGN certificate: exit 6, the message says which and when.
        now = dt.datetime.now(dt.timezone.utc)
        p12, password = issue_bad_p12(pki, tmp_path / "expired.p12", "sign",
                                      not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=2))
        h.write_config(config, sandbox.url, **{"certificates.sign": {"p12": str(p12), "password_file": str(password)}})
        expired = _check(config)
        assert expired.exit_code == EXIT_CERTIFICATE
        assert "[FAIL] sign" in expired.output and "expired" in expired.output

        # A certificate from another CA for TLS: the DMP refuses the handshake.
        p12, password = issue_bad_p12(pki, tmp_path / "other.p12", "auth_cli", other_ca=True)
        h.write_config(config, sandbox.url, **{"certificates.auth_cli": {"p12": str(p12), "password_file": str(password)}})
        other = _check(config)
        assert other.exit_code in (EXIT_ATTENTION, EXIT_CERTIFICATE)
        assert "[FAIL] auth_cli" in other.output and "does not chain" in other.output
        assert "[FAIL] dmp" in other.output


def test_check_reports_an_unreachable_dmp_and_missing_store(tmp_path):
    config = demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    (tmp_path / "store" / "store.sqlite3").unlink()
    (tmp_path / "store" / "store.sqlite3").write_bytes(b"")
    result = _check(config)
    assert result.exit_code == EXIT_ATTENTION
    assert "[FAIL] store" in result.output and "dmp_patient" in result.output
    assert "[FAIL] dmp" in result.output and "unreachable" in result.output


def test_check_fails_a_schedule_the_daemon_could_not_follow(tmp_path):
    """A cron expression with five fields that APScheduler still refuses (minute 61) passes the load-time check;
    `check` asks the scheduler itself."""
    config = demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    h.write_config(config, schedule={"cron": "61 2 * * *"})
    result = _check(config)
    assert result.exit_code == EXIT_ATTENTION
    assert "[FAIL] schedule" in result.output and "schedule.cron" in result.output


def test_check_refuses_production_pointed_at_a_test_server(tmp_path):
    """environment = "production" against the sandbox (a local address, a server certificate and ORG
    certificates from a TEST CA) fails `check`, each reason on its line; the same with "test" passes."""
    create_test_pki(tmp_path / "pki")
    demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    with server.serve(pki_dir=tmp_path / "pki", state_path=tmp_path / "sandbox.sqlite3", fast=True) as sandbox:
        config = demo.prepare_folder(tmp_path, sandbox.url)
        h.write_config(config, sandbox.url, dmp={"environment": "production"})
        result = _check(config)
        assert result.exit_code == EXIT_ATTENTION, result.output
        env_lines = [line for line in result.output.splitlines() if line.startswith("[FAIL] environ")]
        assert any("127.0.0.1" in line for line in env_lines), result.output
        assert any("server certificate" in line and "TEST" in line for line in env_lines), result.output
        assert any("auth_cli" in line and "TEST" in line for line in env_lines), result.output
        config = demo.prepare_folder(tmp_path, sandbox.url)  # back to "test"
        assert "[FAIL] environ" not in _check(config).output


def test_check_warns_about_key_and_password_files_other_users_can_read(tmp_path):
    config = demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    password = tmp_path / "pki" / "sign.password"
    password.chmod(0o600)
    (tmp_path / "pki" / "sign.p12").chmod(0o600)
    assert "sign.password is readable" not in _check(config).output
    password.chmod(0o644)
    result = _check(config)
    assert f"[WARN] sign      {password} is readable by other users (mode 0644): chmod 0600 {password}" in result.output
