"""A DMP outage is never silent: a run that cannot reach the DMP, or whose TLS handshake with it fails, logs the
cause at WARNING/ERROR, stops taking patients, exits 4 (unreachable) or 6 (TLS refused: a configuration problem,
not retried for days), and `status --check` turns CRITICAL naming the cause."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

import delivery_harness as h
from connector.cli import main
from connector.trust import pki


def _invoke(cfg, *args):
    return CliRunner().invoke(main, [*args, "--config", str(cfg)])


def test_unreachable_dmp_exits_4_logs_the_cause_and_check_is_critical(tmp_path):
    store = tmp_path / "store"
    keys = h.synthetic_store(store, 12, seed=7, per_patient=(1, 1))  # twelve patients
    folder = h.make_folder(tmp_path)
    cfg = folder.configure(h.PLACEHOLDER_URL)  # 127.0.0.1:1: connection refused
    result = _invoke(cfg, "run")
    assert result.exit_code == 4, result.output
    out = result.output
    assert "WARNING connector.deliver: submission" in out and "ITI-41 attempt 1 of 3: transient: not sent: ConnectionError" in out
    assert "DEFERRED DMP_UNREACHABLE until" in out
    assert "ERROR connector.run: the DMP cannot be reached (not sent: ConnectionError" in out
    assert "DMP unreachable: not sent: ConnectionError" in out  # the summary printed on stdout
    states = h.ledger_states(folder.ledger_url)
    deferred = [k for k, s in states.items() if s == ("DEFERRED", "DMP_UNREACHABLE")]
    # Once a submission could not reach the DMP, no new patient is taken: only those already handed to the senders
    # (max_in_flight + 1 queued) and the one waiting for a sender were tried.
    assert 1 <= len(deferred) <= 4 + 2 < len(keys), deferred
    run = h.ledger_rows(folder.ledger_url, "SELECT status, message FROM runs")[-1]
    assert run.status == "unreachable" and "Connection refused" in run.message

    check = _invoke(cfg, "status", "--check")
    assert check.exit_code == 2
    assert check.stdout.startswith("DMP-CONNECTOR CRITICAL - DMP unreachable in run #1: not sent: ConnectionError")
    detail = _invoke(cfg, "status")
    assert "DMP_UNREACHABLE  not sent: ConnectionError" in detail.output  # the deferred list says why


def test_tls_verification_failure_is_a_configuration_problem_exit_6_not_retried(tmp_path):
    store = tmp_path / "store"
    h.synthetic_store(store, 2, seed=8, per_patient=(1, 1))
    folder = h.make_folder(tmp_path)
    other = pki.create_test_pki(tmp_path / "other-pki")  # a CA that did not issue the sandbox's certificate
    with h.sandbox(folder) as sb:  # it has loaded its certificate and CA: the connector's ca_bundle now differs
        cfg = folder.configure(sb.url)
        shutil.copy(other.ca_cert, folder.path / "pki" / "ca.pem")
        result = _invoke(cfg, "run")
    assert result.exit_code == 6, result.output
    assert "ITI-41 attempt 1 of 3" in result.output
    assert "ITI-41 attempt 2 of 3" not in result.output, "a failed TLS handshake is not retried in the run"
    assert "certificate verify failed" in result.output and "DEFERRED TLS_REFUSED" in result.output
    assert "check dmp.base_url's host name, dmp.ca_bundle" in result.output
    assert h.received(folder)["submissions"] == 0
    check = _invoke(cfg, "status", "--check")
    assert check.exit_code == 2 and "TLS with the DMP refused in run #1 (a configuration problem)" in check.stdout


def test_a_finess_typo_is_visible_in_the_exit_code_and_the_check(tmp_path):
    """Every document of the mistyped site is SKIPPED SITE_UNKNOWN: the run exits 1 naming it, `status --check`
    warns, and keeps warning that the configured site has no document at all."""
    folder = h.make_folder(tmp_path)  # the sample store: sites 0B0999998 and 0B0999997
    with h.sandbox(folder) as sb:
        cfg = folder.configure(sb.url, monitoring={"attention_skip_reasons": ["SITE_UNKNOWN", "TYPE_NOT_ALLOWED"]})
        cfg.write_text(cfg.read_text().replace('finess_geo = "0B0999998"', 'finess_geo = "0B0999989"'))
        first = _invoke(cfg, "run")
        assert first.exit_code == 1, first.output
        assert "needs a human: " in first.output and "document(s) newly skipped SITE_UNKNOWN (FINESS géo not in " \
               "structure.sites: a typo?)" in first.output
        check = _invoke(cfg, "status", "--check")
        assert check.exit_code == 1 and "newly skipped" in check.stdout
        assert "site 0B0999989 of structure.sites has no document in the ledger (a typo in its FINESS géo?)" in check.stdout
        second = _invoke(cfg, "run")  # nothing new: the run is quiet, the check still is not
        assert second.exit_code == 0, second.output
        check = _invoke(cfg, "status", "--check")
        assert check.exit_code == 1 and "site 0B0999989 of structure.sites has no document" in check.stdout


def test_run_summary_as_json_has_every_count_even_zero():
    """`run --format json` gave `{}` for a run that fed nothing: a reader wants the same keys every night."""
    from connector.actions.run import Summary

    data = Summary(run_id=4, mode="run").as_dict()
    assert data["documents"] == {"fed": 0, "deferred": 0, "failed": 0, "withdrawn": 0, "claimed_elsewhere": 0, "error": 0}
    assert (data["status"], data["exit_code"], data["skipped"], data["attention"]) == ("done", 0, 0, [])
