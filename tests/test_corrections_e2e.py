"""Issue 17 end to end over real mutual TLS: the sample store fed to the sandbox DMP, then corrected by real runs
(a new version replaces its DMP entry, a masking change and a due unmask replace it with new codes, a CANCELLED
document is withdrawn, a replacement the registry refuses ends FAILED with the DMP's code)."""

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from connector import config, samples, scan as scan_module
from connector.actions import demo, run as run_action, status as status_action
from connector.cli import main
from connector.ledger.repo import open_ledger, utcnow
from connector.payload import ids
from connector.sandbox import report, server
from connector.sandbox.state import SandboxState

DOC_SET = "urn:oasis:names:tc:ebxml-regrep:StatusType:"


@pytest.fixture
def dmp(tmp_path):
    """(settings, sandbox state path) of the demo folder (sample store) pointed at a running sandbox DMP."""
    demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    state = tmp_path / "sandbox.sqlite3"
    with server.serve(pki_dir=tmp_path / "pki", state_path=state, fast=True) as sandbox:
        yield config.load(demo.prepare_folder(tmp_path, sandbox.url)), state


def entries(state, settings, document_id):
    """The sandbox's entries of one store document (its CDA setId), oldest first: (version, status, entryUUID,
    confidentiality, uniqueId)."""
    set_id = ids.document_set_id(settings.structure.oid_root, document_id) + "^"  # root^extension
    sandbox = SandboxState(state)
    try:
        rows = sandbox.query("SELECT version, status, entry_uuid, confidentiality, uid FROM documents"
                             " WHERE set_id = ? AND is_signature = 0 AND duplicate = 0 ORDER BY id", (set_id,))
        return [(int(r["version"]), r["status"].removeprefix(DOC_SET).rsplit(":", 1)[-1], r["entry_uuid"],
                 r["confidentiality"], r["uid"]) for r in rows]
    finally:
        sandbox.close()


def lifecycle(state):
    sandbox = SandboxState(state)
    try:
        return [dict(r) for r in sandbox.query("SELECT kind, target, old_status, new_status, cause FROM lifecycle ORDER BY id")]
    finally:
        sandbox.close()


def store_sql(settings, sql, **params):
    with sa.create_engine(settings.store.url).begin() as conn:
        conn.execute(sa.text(sql), params)


def new_version(settings, document_id, version, **changes):
    with sa.create_engine(settings.store.url).begin() as conn:
        row = dict(conn.execute(sa.text("SELECT * FROM dmp_document WHERE document_id = :d ORDER BY version DESC"),
                                dict(d=document_id)).mappings().first())
        row.update(version=version, **changes)
        conn.execute(sa.text(f"INSERT INTO dmp_document ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"),
                     row)


def ledger_row(settings, document_id, version):
    ledger = open_ledger(settings.ledger.url)
    try:
        with ledger.engine.connect() as conn:
            return conn.execute(sa.text("SELECT * FROM documents WHERE document_id = :d AND version = :v"),
                                dict(d=document_id, v=version)).mappings().one()
    finally:
        ledger.engine.dispose()


def test_a_new_version_replaces_the_entry_the_registry_holds(dmp):
    settings, state = dmp
    run_action.run(settings)
    [first] = entries(state, settings, "DOC-001")
    assert first[:2] == (1, "Approved")
    v1_entry = first[2]
    new_version(settings, "DOC-001", 2, title="Lettre de liaison corrigée")

    second = run_action.run(settings)
    assert second.counts["fed"] == 1 and second.counts["failed"] == 0
    (v1, v2) = entries(state, settings, "DOC-001")
    assert v1[:3] == (1, "Deprecated", v1_entry) and v2[:2] == (2, "Approved")
    assert lifecycle(state) == [dict(kind="replacement", target=v1_entry, old_status=DOC_SET + "Approved",
                                     new_status=DOC_SET + "Deprecated", cause=v2[2])]
    assert ledger_row(settings, "DOC-001", 1)["dmp_status"] == "Deprecated"
    row = ledger_row(settings, "DOC-001", 2)
    assert (row["state"], row["dmp_status"], row["dmp_entry_uuid"], row["cda_version"]) == ("FED", "Approved", v2[2], 2)

    third = run_action.run(settings)  # nothing more to do: each version has its one entry
    assert third.counts["fed"] == 0 and third.skipped["REPLACED"] == 1
    received = report.report(state)
    assert received["duplicate_deliveries"] == 0 and received["replacements"] == 1 and received["rejected"] == 0


def test_a_masking_change_replaces_the_entry_with_the_new_codes(dmp):
    settings, state = dmp
    run_action.run(settings)
    store_sql(settings, "UPDATE dmp_document SET mask_professionals = 1 WHERE document_id = 'DOC-002'")
    second = run_action.run(settings)
    assert second.counts["fed"] == 1
    old, new = entries(state, settings, "DOC-002")
    assert (old[1], old[3]) == ("Deprecated", "N") and (new[1], new[3]) == ("Approved", "N,MASQUE_PS")
    assert new[0] == old[0] + 1 and new[4] != old[4]  # a higher versionNumber, ids of its own
    assert run_action.run(settings).counts["fed"] == 0


def test_an_invisible_document_is_made_visible_when_its_unmask_is_due(dmp, monkeypatch):
    settings, state = dmp
    store_sql(settings, "UPDATE dmp_document SET invisible_to_patient = 1 WHERE document_id IN ('DOC-004', 'DOC-005')")
    store_sql(settings, "UPDATE dmp_document SET announced_at = :at WHERE document_id = 'DOC-005'",
              at=dt.datetime.now() + dt.timedelta(days=3))  # local time, as the store says it
    run_action.run(settings)
    assert entries(state, settings, "DOC-004")[0][3] == "N,INVISIBLE_PATIENT"
    assert run_action.run(settings).counts["fed"] == 0  # not due yet

    monkeypatch.setattr(scan_module, "utcnow", lambda: utcnow() + dt.timedelta(days=4))  # the announcement: DOC-005
    assert run_action.run(settings).counts["fed"] == 1
    assert [e[1:4:2] for e in entries(state, settings, "DOC-005")] == [("Deprecated", "N,INVISIBLE_PATIENT"),
                                                                       ("Approved", "N")]
    assert len(entries(state, settings, "DOC-004")) == 1

    # A month after their feeding: DOC-004 and the sample store's minor's document fed INVISIBLE_PATIENT (DOC-015)
    monkeypatch.setattr(scan_module, "utcnow", lambda: utcnow() + dt.timedelta(days=30))
    assert run_action.run(settings).counts["fed"] == 2
    assert [e[1:4:2] for e in entries(state, settings, "DOC-004")] == [("Deprecated", "N,INVISIBLE_PATIENT"),
                                                                       ("Approved", "N")]
    assert [e[1:4:2] for e in entries(state, settings, "DOC-015")] == [
        ("Deprecated", "N,MASQUE_PS,INVISIBLE_PATIENT,INVISIBLE_REPRESENTANTS_LEGAUX"),
        ("Approved", "N,MASQUE_PS,INVISIBLE_REPRESENTANTS_LEGAUX")]
    assert run_action.run(settings).counts["fed"] == 0
    assert report.report(state)["replacements"] == 3


def test_a_cancelled_document_is_withdrawn_once(dmp):
    settings, state = dmp
    run_action.run(settings)
    store_sql(settings, "UPDATE dmp_document SET status = 'CANCELLED' WHERE document_id = 'DOC-014'")
    second = run_action.run(settings)
    assert second.counts["withdrawn_from_dmp"] == 1 and second.counts["fed"] == 0
    [(_, status, entry, _, _)] = entries(state, settings, "DOC-014")
    assert status == "Deleted"
    assert [(c["kind"], c["target"], c["new_status"]) for c in lifecycle(state)] == [
        ("status", entry, "urn:asip:ci-sis:2010:StatusType:Deleted")]
    row = ledger_row(settings, "DOC-014", 1)
    assert (row["state"], row["dmp_status"], row["reason"]) == ("FED", "Deleted", "WITHDRAWN")
    assert "CANCELLED" in row["detail"]
    third = run_action.run(settings)
    assert third.counts["withdrawn_from_dmp"] == 0 and third.skipped["WITHDRAWN"] == 1
    assert report.report(state)["withdrawals"] == 1


def test_a_replacement_the_registry_refuses_ends_failed_with_its_code(dmp):
    settings, state = dmp
    run_action.run(settings)
    # Someone else's replacement deprecated the entry meanwhile: the ledger still thinks it Approved.
    [(_, _, entry, _, _)] = entries(state, settings, "DOC-001")
    sandbox = SandboxState(state)
    with sandbox._transaction() as db:
        db.execute("UPDATE documents SET status = ? WHERE entry_uuid = ?", (DOC_SET + "Deprecated", entry))
    sandbox.close()
    new_version(settings, "DOC-001", 2)
    second = run_action.run(settings)
    assert second.counts["failed"] == 1 and second.counts["fed"] == 0
    row = ledger_row(settings, "DOC-001", 2)
    assert (row["state"], row["reason"]) == ("FAILED", "XDSRegistryDeprecatedDocumentError")
    ledger = open_ledger(settings.ledger.url)
    try:
        found = status_action.problems(status_action.collect(ledger))
    finally:
        ledger.engine.dispose()
    assert any("FAILED" in p for p in found)
    assert [e[1] for e in entries(state, settings, "DOC-001")] == ["Deprecated"]  # nothing else registered


def test_withdraw_command_withdraws_once_and_keeps_its_reason_in_the_audit_trail(dmp, tmp_path):
    settings, state = dmp
    cfg = str(tmp_path / "dmp-connector.toml")
    run_action.run(settings)
    refused = CliRunner().invoke(main, ["withdraw", "DOC-023", "--reason", "wrong patient", "--config", cfg])
    assert refused.exit_code == 0, refused.output
    assert "DOC-023 v1: FED WITHDRAWN, in the DMP Deleted" in refused.output
    [(_, status, _, _, _)] = entries(state, settings, "DOC-023")
    assert status == "Deleted"
    again = CliRunner().invoke(main, ["withdraw", "DOC-023", "--reason", "twice", "--config", cfg])
    assert again.exit_code == 1 and "no entry Approved in the DMP" in again.output and "v1 Deleted" in again.output
    unknown = CliRunner().invoke(main, ["withdraw", "NO-SUCH-DOC", "--reason", "x", "--config", cfg])
    assert unknown.exit_code == 1 and "unknown to the ledger" in unknown.output
    assert report.report(state)["withdrawals"] == 1
    assert run_action.run(settings).skipped["WITHDRAWN"] == 1

    exported = CliRunner().invoke(main, ["audit", "export", "--format", "json", "--config", cfg])
    rows = json.loads(exported.output[exported.output.index("["):])
    mine = [r for r in rows if r["document_ids"] == "DOC-023:1"]
    assert [(r["action"], r["outcome"]) for r in mine] == [
        ("ITI-41", "accepted"), ("WITHDRAW", "requested"), ("ITI-18", "Approved"), ("ITI-57", "accepted")]
    assert all("wrong patient" in r["message"] for r in mine if r["action"] in ("WITHDRAW", "ITI-57"))


def test_withdraw_no_run_journals_it_for_the_next_run(dmp, tmp_path):
    settings, state = dmp
    cfg = str(tmp_path / "dmp-connector.toml")
    run_action.run(settings)
    result = CliRunner().invoke(main, ["withdraw", "DOC-023", "--reason", "duplicate", "--no-run", "--config", cfg])
    assert result.exit_code == 0 and "the next run sends it" in result.output
    assert entries(state, settings, "DOC-023")[0][1] == "Approved"
    assert run_action.run(settings).counts["withdrawn_from_dmp"] == 1
    assert entries(state, settings, "DOC-023")[0][1] == "Deleted"


def test_export_as_sent_shows_the_replacement_and_the_withdrawal(dmp, tmp_path):
    settings, state = dmp
    cfg = str(tmp_path / "dmp-connector.toml")
    run_action.run(settings)
    new_version(settings, "DOC-001", 2, title="Lettre corrigée")
    run_action.run(settings)
    [_, v2] = entries(state, settings, "DOC-001")
    result = CliRunner().invoke(main, ["export", "--document", "DOC-001", "--version", "2", "--as-sent",
                                       "--out", str(tmp_path / "out"), "--config", cfg])
    assert result.exit_code == 0, result.output
    [request] = (tmp_path / "out").glob("*/iti41-request.http")
    body = request.read_bytes()
    assert b"urn:ihe:iti:2007:AssociationType:RPLC" in body and v2[2].encode() in body
    [cda] = (tmp_path / "out").glob("*/cda-DOC-001-v2.xml")
    assert b'typeCode="RPLC"' in cda.read_bytes()

    assert CliRunner().invoke(main, ["withdraw", "DOC-001", "--reason", "erroneous", "--config", cfg]).exit_code == 0
    result = CliRunner().invoke(main, ["export", "--document", "DOC-001", "--version", "2", "--as-sent",
                                       "--out", str(tmp_path / "out2"), "--config", cfg])
    assert result.exit_code == 0, result.output
    [withdrawal] = (tmp_path / "out2").glob("*/iti57-request.http")
    assert b"urn:asip:ci-sis:2010:StatusType:Deleted" in withdrawal.read_bytes()
    assert "erroneous" in next((tmp_path / "out2").glob("*/REASON.txt")).read_text()


def test_dry_run_says_what_would_be_replaced_and_withdrawn(dmp, tmp_path):
    settings, state = dmp
    run_action.run(settings)
    samples.apply_corrections(settings.store.content_root)
    result = CliRunner().invoke(main, ["run", "--dry-run", "--config", str(tmp_path / "dmp-connector.toml")])
    assert result.exit_code == 0, result.output
    lines = {line.split("  ")[0]: line for line in result.output.splitlines() if line.startswith("DOC-")}
    assert "replaces the DMP entry of v1" in lines["DOC-001 v2"]
    assert "replaces the DMP entry of v1" in lines["DOC-002 v1"] and "masking changed" in lines["DOC-002 v1"]
    assert "unmask due" in lines["DOC-015 v1"]
    assert "withdraw from the DMP" in lines["DOC-014 v1"]
    assert report.report(state)["replacements"] == 0  # nothing sent
