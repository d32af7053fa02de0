"""`run --dry-run --format json` over the sample store gives the expected decision for every document."""

import json

from click.testing import CliRunner

from connector import samples
from connector.cli import EXIT_CONFIG, EXIT_UNAVAILABLE, main


def _config(tmp_path, store_dir, extra=""):
    path = tmp_path / "config.toml"
    path.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[structure]
finess_ej = "0B0999999"
oid_root = "1.2.250.1.999.42"
[[structure.sites]]
finess_geo = "0B0999998"
name = "Site A"
healthcare_facility_type = "SA01"
practice_setting = "ETABLISSEMENT"
[[structure.sites]]
finess_geo = "0B0999997"
name = "Site B"
healthcare_facility_type = "SA07"
practice_setting = "ETABLISSEMENT"
[store]
url = "sqlite:///{store_dir / 'store.sqlite3'}"
content_root = "{store_dir}"
[dmp]
base_url = "https://127.0.0.1:1/si-dmp-server/v2/services"
environment = "test"
{extra}
""", encoding="utf-8")
    return path


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
    # Nothing recorded by a dry run.
    status = CliRunner().invoke(main, ["status", "--format", "json", "--config", str(_config(tmp_path, store_dir))])
    assert json.loads(status.output)["documents_by_state"]["SKIPPED"] == 0


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
