"""Issue 17 end to end over real mutual TLS: the sample store fed to the sandbox DMP, then corrected by real runs
(a new version replaces its DMP entry, a masking change and a due unmask replace it with new codes, a CANCELLED
document is withdrawn, a replacement the registry refuses ends FAILED with the DMP's code)."""

import datetime as dt

import pytest
import sqlalchemy as sa

from connector import config, scan as scan_module
from connector.actions import demo, run as run_action, status as status_action
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
