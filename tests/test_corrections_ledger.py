"""Issue 17, the ledger: each document version records its DMP entry (entryUUID, status Approved / Deprecated /
Deleted, masking codes, CDA versionNumber); a FED replacement deprecates the version it replaces; ledgers from
before migration 0007 get their FED documents Approved under the ids they were sent with."""

import pytest
import sqlalchemy as sa

from connector.ledger import migrate
from connector.ledger.repo import SubmissionDoc, open_ledger, utcnow
from connector.ledger.schema import APPROVED, DEPRECATED, FED, PENDING, REPLACE, documents

J = dict(owner="inst-a", lease=__import__("datetime").timedelta(minutes=10))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    return open_ledger(request.getfixturevalue("pg_url"), auto_migrate=True)


def _row(ledger, document_id, version):
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(documents).where(documents.c.document_id == document_id,
                                                       documents.c.version == version)).one()


def _feed(ledger, uid, docs):
    run_id = ledger.start_run("run")
    ledger.record_decisions([dict(document_id=d.document_id, version=d.version, patient_id="IPP-1", state=PENDING)
                             for d in docs], run_id)
    record = ledger.journal_submission(submission_set_uid=uid, entry_uuid="urn:uuid:s-" + uid, patient_id="IPP-1",
                                       finess_geo="0B0999998", submission_time=utcnow(), docs=docs, run_id=run_id, **J)
    assert record.documents == tuple(docs)  # journaled as given, read back whole (a resend rebuilds from it)
    ledger.settle_submission(record.id, state=FED, outcome="accepted")


def test_a_fed_version_is_approved_under_its_entry_uuid_with_its_codes(ledger):
    _feed(ledger, "1.1", [SubmissionDoc("D1", 1, "1.9.1", "urn:uuid:a", masking="INVISIBLE_PATIENT")])
    row = _row(ledger, "D1", 1)
    assert (row.state, row.dmp_status, row.dmp_entry_uuid, row.masking, row.cda_version) == (
        FED, APPROVED, "urn:uuid:a", "INVISIBLE_PATIENT", 1)
    state = ledger.states([("D1", 1)])[("D1", 1)]
    assert (state.dmp_status, state.masking, state.fed_at) == (APPROVED, "INVISIBLE_PATIENT", row.fed_at)


def test_a_fed_replacement_deprecates_the_version_it_replaces(ledger):
    _feed(ledger, "1.1", [SubmissionDoc("D1", 1, "1.9.1", "urn:uuid:a", masking="")])
    _feed(ledger, "1.2", [SubmissionDoc("D1", 2, "1.9.2", "urn:uuid:b", action=REPLACE, cda_version=2, masking="",
                                        replaces_version=1, replaces_unique_id="1.9.1",
                                        replaces_entry_uuid="urn:uuid:registry-a")])
    assert _row(ledger, "D1", 1).dmp_status == DEPRECATED
    assert (_row(ledger, "D1", 2).dmp_status, _row(ledger, "D1", 2).dmp_entry_uuid) == (APPROVED, "urn:uuid:b")


def test_a_masking_replacement_of_the_same_version_moves_its_entry(ledger):
    _feed(ledger, "1.1", [SubmissionDoc("D1", 1, "1.9.1", "urn:uuid:a", masking="INVISIBLE_PATIENT")])
    _feed(ledger, "1.2", [SubmissionDoc("D1", 1, "1.9.1.r2", "urn:uuid:a2", action=REPLACE, cda_version=2,
                                        masking="", replaces_version=1, replaces_unique_id="1.9.1",
                                        replaces_entry_uuid="urn:uuid:a")])
    row = _row(ledger, "D1", 1)
    assert (row.dmp_status, row.dmp_entry_uuid, row.masking, row.cda_version) == (APPROVED, "urn:uuid:a2", "", 2)


def test_migration_0007_approves_what_was_fed_before(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine, "0006")
    now = utcnow()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO submissions (id, submission_set_uid, entry_uuid, patient_id, finess_geo, state, submission_time,"
            " created_at, updated_at, attempts) VALUES (1, '1.2', 'urn:uuid:s', 'IPP-1', '0B0999998', 'FED', ?, ?, ?, 1)",
            (now, now, now))
        conn.exec_driver_sql("INSERT INTO submission_documents VALUES (1, 'D1', 1, '1.9.1', 'urn:uuid:a')")
        for version, state, sub in ((1, "FED", 1), (2, "SKIPPED", None)):
            conn.exec_driver_sql(
                "INSERT INTO documents (document_id, version, patient_id, state, held, attempts, first_seen_at,"
                " updated_at, submission_id) VALUES ('D1', ?, 'IPP-1', ?, 0, 0, ?, ?, ?)", (version, state, now, now, sub))
    engine.dispose()
    ledger = open_ledger(url)
    assert migrate.current(ledger.engine) == migrate.head()
    fed, skipped = _row(ledger, "D1", 1), _row(ledger, "D1", 2)
    assert (fed.dmp_status, fed.dmp_entry_uuid, fed.masking) == (APPROVED, "urn:uuid:a", None)
    assert (skipped.dmp_status, skipped.dmp_entry_uuid) == (None, None)
    assert ledger.submission(1).documents[0].action == "FEED"


def test_a_rebuilt_ledger_keeps_withdrawn_documents_withdrawn_and_entry_versions(tmp_path):
    """`db rebuild` from dmp_feed_status: a WITHDRAWN row stays withdrawn (never fed again), a FED row's CDA
    versionNumber is its uniqueId's (a later correction's goes above it)."""
    from connector import samples
    from connector.actions.rebuild import rebuild
    from connector.store import Store

    db = samples.create_sample_store(tmp_path / "store")
    store = Store(f"sqlite:///{db}", tmp_path / "store")
    store.ensure_write_back_table()
    now = utcnow()
    store.write_back([dict(document_id="DOC-001", version=1, status="FED", dmp_unique_id="1.2.250.1.999.1.77.3",
                           fed_at=now, last_error=None),
                      dict(document_id="DOC-014", version=1, status="WITHDRAWN", dmp_unique_id="1.2.250.1.999.1.78.1",
                           fed_at=now, last_error=None)])
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    assert rebuild(ledger, store) == 2
    fed, withdrawn = _row(ledger, "DOC-001", 1), _row(ledger, "DOC-014", 1)
    assert (fed.state, fed.dmp_status, fed.cda_version) == (FED, APPROVED, 3)
    assert (withdrawn.state, withdrawn.dmp_status, withdrawn.reason) == (FED, "Deleted", "WITHDRAWN")
    rows = {r["document_id"]: r["status"] for r in ledger.write_back_rows(pending_only=False)}
    assert rows == {"DOC-001": "FED", "DOC-014": "WITHDRAWN"}


def test_a_sandbox_state_file_from_before_the_confidentiality_codes_is_upgraded(tmp_path):
    import sqlite3

    from connector.sandbox.state import SandboxState

    SandboxState(tmp_path / "sandbox.sqlite3").close()
    with sqlite3.connect(tmp_path / "sandbox.sqlite3") as db:
        db.execute("ALTER TABLE documents DROP COLUMN confidentiality")  # as an older sandbox wrote it
    SandboxState(tmp_path / "sandbox.sqlite3").close()
    with sqlite3.connect(tmp_path / "sandbox.sqlite3") as db:
        assert "confidentiality" in {r[1] for r in db.execute("PRAGMA table_info(documents)")}
