"""The ledger on SQLite and PostgreSQL: migrations, write-ahead submissions, state rules, run lock."""

import datetime as dt

import pytest
import sqlalchemy as sa

from connector.ledger import migrate
from connector.ledger.repo import LedgerError, SubmissionDoc, open_ledger, utcnow
from connector.ledger.schema import DEFERRED, FAILED, FED, PENDING, SKIPPED, SUBMITTING, documents
from connector.runlock import AlreadyRunning, run_lock


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        return open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    url = request.getfixturevalue("pg_url")
    with pytest.raises(LedgerError, match="db upgrade"):
        open_ledger(url)  # PostgreSQL is never migrated behind the operator's back
    return open_ledger(url, auto_migrate=True)


def _state(ledger, key):
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(documents).where(documents.c.document_id == key[0], documents.c.version == key[1])).one()


LEASE = dt.timedelta(minutes=10)
J = dict(owner="inst-a", lease=LEASE)


def _journaled_d1(ledger, uid: str, key=("D1", 1)):
    """A new run with document `key` (D1 v1) PENDING, journaled by inst-a in submission set `uid`: (run id, record)."""
    run_id = ledger.start_run("run")
    _pending(ledger, run_id, key)
    rec = ledger.journal_submission(submission_set_uid=uid, entry_uuid="urn:uuid:s", patient_id="IPP-1",
                                    finess_geo="0B0999998", submission_time=utcnow(),
                                    docs=[SubmissionDoc(*key, f"{uid}.1", "urn:uuid:a")], run_id=run_id, **J)
    return run_id, rec


def _pending(ledger, run_id, *keys):
    ledger.record_decisions([dict(document_id=k, version=v, patient_id="IPP-1", state=PENDING) for k, v in keys], run_id)


def test_migrated_to_head(ledger):
    assert migrate.current(ledger.engine) == migrate.head()


def _index_sql(engine) -> dict[str, str]:
    """The documents table's indexes, name -> definition, from the database's own catalog."""
    if engine.dialect.name == "sqlite":
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'documents' AND sql IS NOT NULL"
    else:
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'documents' AND schemaname = current_schema()"
    with engine.connect() as conn:
        return {name: sql.replace('"', "").lower() for name, sql in conn.exec_driver_sql(query)}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_upgrade_0002_to_0003_replaces_the_report_indexes(request, tmp_path, dialect):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")
    engine = sa.create_engine(url)
    migrate.upgrade(engine, "0002")
    assert {"ix_documents_report", "ix_documents_seen_day"} <= _index_sql(engine).keys()
    migrate.upgrade(engine, "0003")
    indexes = _index_sql(engine)
    assert "date(first_seen_at)" in indexes["ix_documents_cells"] and "date(fed_at)" in indexes["ix_documents_cells"]
    assert "ix_documents_fed_day" in indexes  # still read by `status --since`
    assert not {"ix_documents_report", "ix_documents_seen_day"} & indexes.keys()
    from alembic import command

    with engine.begin() as conn:  # and back: the downgrade restores 0002's indexes
        command.downgrade(migrate._config(conn), "0002")
    assert {"ix_documents_report", "ix_documents_seen_day"} <= _index_sql(engine).keys()
    assert "ix_documents_cells" not in _index_sql(engine)
    engine.dispose()


def test_statements_per_submission_search_an_index(tmp_path):
    """What the run does for every submission set (decisions, journal, attempt, settle, withdraw, audit) reads
    rows through an index, never by scanning a table: the ledger keeps every document ever fed, and a scan
    under the write lock costs 0.1–0.7 s on 1,000,000 documents (migration 0004)."""
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    plans = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters[0] if executemany else parameters)
            plans.append((statement, [row[-1] for row in rows]))

    run_id, rec = _journaled_d1(ledger, "1.7")
    _, other = _journaled_d1(ledger, "1.8", ("D2", 1))
    sa.event.listen(ledger.engine, "before_cursor_execute", explain)
    try:
        _pending(ledger, run_id, ("D3", 1))
        ledger.journal_submission(submission_set_uid="1.9", entry_uuid="urn:uuid:t", patient_id="IPP-1",
                                  finess_geo="0B0999998", submission_time=utcnow(),
                                  docs=[SubmissionDoc("D3", 1, "1.9.1", "urn:uuid:c")], run_id=run_id, **J)
        ledger.record_attempt(rec.id)
        ledger.first_attempt_at(rec.id)
        ledger.settle_submission(rec.id, state=FED, outcome="accepted")
        ledger.withdraw_submission(other.id, "OPPOSITION", "opposed since")
        ledger.audit(run_id=run_id, action="ITI-41", outcome="accepted")
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", explain)
    assert len(plans) >= 8
    for statement, details in plans:
        assert not any(d.startswith("SCAN") for d in details), (statement, details)
    ledger.engine.dispose()


def test_write_ahead_ids_are_committed_and_reused(ledger):
    run_id = ledger.start_run("run")
    _pending(ledger, run_id, ("D1", 1), ("D2", 1))
    docs = [SubmissionDoc("D1", 1, "1.2.3.1", "urn:uuid:a"), SubmissionDoc("D2", 1, "1.2.3.2", "urn:uuid:b")]
    t0 = dt.datetime(2026, 11, 21, 1, 0, 0)
    rec = ledger.journal_submission(submission_set_uid="1.2.3.9", entry_uuid="urn:uuid:s", patient_id="IPP-1",
                                    finess_geo="0B0999998", submission_time=t0, docs=docs, run_id=run_id, **J)
    assert rec.state == SUBMITTING and [d.unique_id for d in rec.documents] == ["1.2.3.1", "1.2.3.2"]
    assert _state(ledger, ("D1", 1)).state == SUBMITTING
    # A crash here leaves the submission open: the next run finds it, with the same ids and time.
    assert ledger.claim_open_submissions("inst-a", LEASE, run_id) == []  # never re-claimed within its own run
    assert ledger.claim_open_submissions("inst-b", LEASE, run_id + 1) == []  # leased to inst-a
    assert ledger.claim_open_submissions("inst-a", LEASE, run_id + 1) == [rec.id]  # inst-a restarted
    again = ledger.journal_submission(submission_set_uid="1.2.3.9", entry_uuid="urn:uuid:other", patient_id="IPP-1",
                                      finess_geo="0B0999998", submission_time=utcnow(), docs=docs, run_id=run_id + 1, **J)
    assert again.id == rec.id and again.submission_time == t0 and again.entry_uuid == "urn:uuid:s"


def test_settle_fed_and_decisions_never_downgrade_it(ledger):
    run_id, rec = _journaled_d1(ledger, "1.9")
    ledger.record_attempt(rec.id)
    ledger.settle_submission(rec.id, state=FED, outcome="accepted")
    row = _state(ledger, ("D1", 1))
    assert row.state == FED and row.fed_at is not None and row.attempts == 1
    ledger.record_decisions([dict(document_id="D1", version=1, patient_id="IPP-1", state=SKIPPED, reason="X")], run_id)
    assert _state(ledger, ("D1", 1)).state == FED
    assert ledger.claim_open_submissions("inst-a", LEASE, run_id + 1) == []


def test_deferred_then_fed_records_reason_attempts_and_fed_at(ledger):
    run_id, rec = _journaled_d1(ledger, "1.8")
    ledger.record_attempt(rec.id)
    later = utcnow() + dt.timedelta(hours=1)
    ledger.settle_submission(rec.id, state=DEFERRED, outcome="transient", error_code="HTTP_503",
                             error_message="busy", next_attempt_at=later, reason="HTTP_503")
    row = _state(ledger, ("D1", 1))
    assert (row.state, row.reason, row.detail, row.fed_at, row.attempts) == (DEFERRED, "HTTP_503", "busy", None, 1)
    assert row.next_attempt_at == later
    ledger.record_attempt(rec.id)
    ledger.settle_submission(rec.id, state=FED, outcome="accepted")
    row = _state(ledger, ("D1", 1))
    assert (row.state, row.reason, row.detail, row.attempts) == (FED, None, None, 2) and row.fed_at is not None
    assert ledger.submission(rec.id).attempts == 2


def test_deferred_is_due_only_after_next_attempt(ledger):
    run_id, rec = _journaled_d1(ledger, "1.8")
    later = utcnow() + dt.timedelta(minutes=15)
    ledger.settle_submission(rec.id, state=DEFERRED, outcome="transient", error_code="XDSRegistryBusy",
                             next_attempt_at=later, reason="TRANSIENT_ERROR")
    assert ledger.claim_open_submissions("inst-a", LEASE, run_id + 1) == []
    assert ledger.claim_open_submissions("inst-b", LEASE, run_id + 1, now=later + dt.timedelta(seconds=1)) == [rec.id]


def test_a_dead_instance_lease_expires(ledger):
    run_id, rec = _journaled_d1(ledger, "1.7")
    # Another instance journaling the same documents does not get them while inst-a's lease lives.
    assert ledger.journal_submission(submission_set_uid="1.7", entry_uuid="urn:uuid:s", patient_id="IPP-1",
                                     finess_geo="0B0999998", submission_time=utcnow(),
                                     docs=[SubmissionDoc("D1", 1, "1.7.1", "urn:uuid:a")], run_id=run_id + 1,
                                     owner="inst-b", lease=LEASE) is None
    after_lease = utcnow() + LEASE + dt.timedelta(seconds=1)
    assert ledger.claim_open_submissions("inst-b", LEASE, run_id + 1, now=after_lease) == [rec.id]


def test_skips_are_recorded_and_reevaluated(ledger):
    run_id = ledger.start_run("run")
    ledger.record_decisions([dict(document_id="D1", version=1, patient_id="IPP-1", state=SKIPPED,
                                  reason="INS_NOT_QUALIFIED")], run_id)
    assert _state(ledger, ("D1", 1)).reason == "INS_NOT_QUALIFIED"
    _pending(ledger, run_id, ("D1", 1))  # the INS became qualified
    row = _state(ledger, ("D1", 1))
    assert row.state == PENDING and row.reason is None


def test_failed_documents_keep_their_reason(ledger):
    run_id = ledger.start_run("run")
    ledger.fail_documents([("D1", 1)], "CDA_INVALID", "D1: schematron error", run_id, "IPP-1")
    row = _state(ledger, ("D1", 1))
    assert (row.state, row.reason) == (FAILED, "CDA_INVALID")
    _pending(ledger, run_id, ("D1", 1))
    assert _state(ledger, ("D1", 1)).state == FAILED  # only a replay requeues a failure


def test_audit_and_runs(ledger):
    run_id = ledger.start_run("run")
    ledger.audit(run_id=run_id, action="ITI-41", outcome="accepted", finess_geo="0B0999998", rpps="10001234567",
                 submission_set_uid="1.2", document_ids=["D1:1"])
    ledger.finish_run(run_id, "done", {"fed": 1})
    from connector.actions.status import collect

    report = collect(ledger)
    assert report["last_runs"][0]["counts"] == {"fed": 1}


def test_one_run_at_a_time(ledger, tmp_path):
    with run_lock(ledger, tmp_path, "inst-a"):
        with pytest.raises(AlreadyRunning):
            with run_lock(open_ledger(str(ledger.engine.url.render_as_string(hide_password=False))), tmp_path, "inst-a"):
                pass
    with run_lock(ledger, tmp_path, "inst-a"):  # released: the next run proceeds
        pass


def test_ledgers_in_two_postgresql_schemas_do_not_lock_each_other_out(tmp_path, pg_url):
    """Advisory locks are database-wide: the same instance name over two schemas' ledgers is two ledgers."""
    import uuid

    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        other_url = pg_url.split("?")[0] + f"?options=-csearch_path%3D{schema}"
        with run_lock(open_ledger(pg_url, auto_migrate=True), tmp_path, "inst-a"):
            with run_lock(open_ledger(other_url, auto_migrate=True), tmp_path, "inst-a"):
                pass
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_a_new_submission_is_returned_as_the_ledger_holds_it(ledger):
    """journal_submission builds the record of a new submission from what it inserted instead of reading it
    back: it must be exactly what `submission` reads (documents in key order, the note as stored, naive UTC)."""
    run_id = ledger.start_run("run")
    _pending(ledger, run_id, ("D2", 1), ("D1", 3), ("D1", 2))
    docs = [SubmissionDoc("D2", 1, "1.5.1", "urn:uuid:b"), SubmissionDoc("D1", 3, "1.5.2", "urn:uuid:c", cda_version=4,
                                                                       masking="MASQUE_PS"),
            SubmissionDoc("D1", 2, "1.5.3", "urn:uuid:a")]
    rec = ledger.journal_submission(submission_set_uid="1.5", entry_uuid="urn:uuid:s", patient_id="IPP-1",
                                    finess_geo="0B0999998", submission_time=utcnow(), docs=docs, run_id=run_id,
                                    note="n" * 1500, **J)
    assert rec == ledger.submission(rec.id)
    assert [d.version for d in rec.documents] == [2, 3, 1] and len(rec.note) == 1000


def test_a_feeding_run_migrates_its_sqlite_ledger_in_a_child_process(tmp_path):
    """Alembic costs 12 MB resident for good: a run creating its ledger (`migrate_apart`) leaves it to a child."""
    import subprocess
    import sys

    code = ("import sys; from connector.ledger import repo, migrate; "
            "ledger = repo.open_ledger(sys.argv[1], migrate_apart=True); "
            "print(migrate.current(ledger.engine) == migrate.head(), 'alembic' in sys.modules)")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
