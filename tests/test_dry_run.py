"""`run --dry-run --format json` over the sample store gives the expected decision for every document."""

import json

from click.testing import CliRunner

import delivery_harness as h
from connector import samples
from connector.cli import EXIT_CONFIG, EXIT_UNAVAILABLE, main


def _config(tmp_path, store_dir):
    """The product's configuration over the store in `store_dir`, without certificates (a dry run needs none)."""
    return h.write_config(tmp_path / "config.toml", **h.NO_PKI,
                          store={"url": f"sqlite:///{store_dir / 'store.sqlite3'}", "content_root": str(store_dir)})


def test_dry_run_json_matches_expected_decisions(tmp_path):
    store_dir = tmp_path / "samples"
    samples.create_sample_store(store_dir)
    result = CliRunner().invoke(main, ["run", "--dry-run", "--format", "json", "--config", str(_config(tmp_path, store_dir))])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    got = {(r["document_id"], r["version"]): r["reason"] for r in rows}
    assert got == samples.expected_decisions()
    for r in rows:
        assert r["decision"] == ("eligible" if r["reason"] is None else "skipped")
    # the activity (contentTypeCode) of each eligible document: with its site, the submission set it joins
    activities = {r["document_id"]: r["content_type_code"] for r in rows if r["patient_id"] == "IPP-001"}
    assert activities == {"DOC-001": "03", "DOC-002": "07", "DOC-003": "97", "DOC-004": "97"}
    assert {r["content_type_code"] for r in rows if r["reason"]} == {None}
    # Nothing recorded by a dry run: not even an empty ledger, which status does not create either.
    status = CliRunner().invoke(main, ["status", "--format", "json", "--config", str(_config(tmp_path, store_dir))])
    assert status.exit_code == 4 and "error: no ledger at " in status.output
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()


def test_dry_run_text_names_each_reason(tmp_path):
    store_dir = tmp_path / "samples"
    samples.create_sample_store(store_dir)
    result = CliRunner().invoke(main, ["run", "--dry-run", "--config", str(_config(tmp_path, store_dir))])
    assert result.exit_code == 0
    eligible = sum(v is None for v in samples.expected_decisions().values())
    assert f"{eligible} eligible" in result.output
    assert "INS_NOT_QUALIFIED" in result.output and "PATIENT_OPPOSED" in result.output
    assert "DOC-001 v1  eligible  0B0999998 activity 03\n" in result.output
    assert "DOC-028 v1  skipped  ACTIVITY_INVALID  (dmp_document.activity 'SA01' is neither" in result.output


def test_bad_config_and_missing_store_tables(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[structure]\nfiness_ej = 'x'\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--dry-run", "--config", str(bad)])
    assert result.exit_code == EXIT_CONFIG and "structure.finess_ej" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["run", "--dry-run", "--config", str(_config(tmp_path, empty))])
    assert result.exit_code == EXIT_UNAVAILABLE and "dmp_patient" in result.output


def test_run_without_certificates_is_a_configuration_error(tmp_path):
    store_dir = tmp_path / "samples"
    samples.create_sample_store(store_dir)
    result = CliRunner().invoke(main, ["run", "--config", str(_config(tmp_path, store_dir))])
    assert result.exit_code == EXIT_CONFIG and "certificates" in result.output
