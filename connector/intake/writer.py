"""Write what an HL7 message asks into the store contract's tables, in one transaction, exactly once.

Besides `dmp_patient` and `dmp_document` (created if absent), the intake keeps two tables of its own in the
store: `dmp_intake_document` (each CDA id received, i.e. each document version, with the store key it was written
under: how a replacement finds its document and a deletion its row) and `dmp_intake_message` (each message
accepted: sender, MSH-10 and a digest of its segments after MSH). A message already recorded, or a document
version already received with the same CDA, is a resend after a lost ACK: acknowledged again, written once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa

from connector import store as contract
from connector.intake.message import DELETION, INITIAL, REPLACEMENT, Intake, Refused
from connector.rules import NOT_FOR_DMP  # the status of a document whose DESTDMP flag is N: recorded, never fed

log = logging.getLogger("connector.intake")

metadata = sa.MetaData()  # the intake's own tables, apart from the store contract's

intake_document = sa.Table(
    "dmp_intake_document",
    metadata,
    sa.Column("unique_id", sa.String(200), primary_key=True),  # ClinicalDocument/id: root or root^extension
    sa.Column("document_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("set_id", sa.String(200), index=True),
    sa.Column("cda_sha256", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("cancelled_at", sa.DateTime),
)

intake_message = sa.Table(
    "dmp_intake_message",
    metadata,
    sa.Column("sender", sa.String(200), primary_key=True),  # MSH-3^MSH-4
    sa.Column("control_id", sa.String(200), primary_key=True),  # MSH-10
    sa.Column("digest", sa.String(64), primary_key=True),  # sha256 of the segments after MSH
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("unique_id", sa.String(200), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
)

# The listener's figures (connector/intake/figures.py), for `status`: messages per hour and outcome ("accepted",
# "resend", "AE 204"…) with their ACK latency as a histogram (le_* ms buckets), and each listener's heartbeat.
intake_figures = sa.Table(
    "dmp_intake_figures",
    metadata,
    sa.Column("hour", sa.DateTime, primary_key=True),  # naive UTC, the hour's start
    sa.Column("outcome", sa.String(32), primary_key=True),
    sa.Column("messages", sa.Integer, nullable=False),
    sa.Column("latency_ms_sum", sa.Float, nullable=False),
    *(sa.Column(f"le_{bound}", sa.Integer, nullable=False) for bound in (10, 50, 200, 1000, 5000)),
)

intake_listener = sa.Table(
    "dmp_intake_listener",
    metadata,
    sa.Column("instance", sa.String(200), primary_key=True),  # host:port
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("seen_at", sa.DateTime, nullable=False),  # its last heartbeat (every intake.hl7.figures_interval_seconds)
    sa.Column("stopped_at", sa.DateTime),  # a clean stop; None while it runs (or if it died)
)


@dataclass(frozen=True)
class Written:
    document_id: str
    version: int
    action: str
    duplicate: bool  # a resend: nothing was written


class _Pending:
    """An intake waiting for its commit, and what came of it."""

    def __init__(self, intake: Intake):
        self.intake, self.written, self.error, self.done = intake, None, None, False


class Writer:
    """Commits intakes to the store. One writer thread at a time in this process (the CPU work, base64 and XML,
    is done before, in parallel); another process writing the same rows meanwhile makes a unique-key conflict,
    retried.

    Group commit: the intakes that arrive while one is being committed are committed together next, in one
    transaction: one fsync for all (a commit of a 1 MB CDA waits ~10 ms for the disk). Each caller returns only
    once its own rows are committed. Should one of them fail there, each is committed alone, as if it came alone."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "postgresql":
            sa.event.listen(self.engine, "connect", _lz4_toast)
        elif self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _wal)
        self._lock = threading.Lock()  # held by the thread committing
        self._queue: list[_Pending] = []  # intakes waiting for the next commit
        self._queue_lock = threading.Lock()

    def create_tables(self) -> None:
        for table in (contract.dmp_patient, contract.dmp_document, intake_document, intake_message, intake_figures,
                      intake_listener):
            try:
                table.create(self.engine, checkfirst=True)
            except sa.exc.DBAPIError:  # another instance created it between the check and the create
                if not sa.inspect(self.engine).has_table(table.name):
                    raise

    def write(self, intake: Intake) -> Written:
        """Commit `intake` (durable when this returns); raises Refused (AE: a contradiction with what was received
        before; AR: the store is unavailable, resend later)."""
        pending = _Pending(intake)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:  # else a thread that held the lock meanwhile committed it with its own
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            raise pending.error
        return pending.written

    def _commit(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                with self.engine.begin() as conn:
                    written = [self._write(conn, p.intake) for p in batch]
            except Exception:  # noqa: BLE001 - one of them failed: each alone below, says which and why
                pass
            else:
                for p, w in zip(batch, written):
                    p.written, p.done = w, True
                return
        for p in batch:
            try:
                p.written = self._write_alone(p.intake)
            except Exception as exc:  # noqa: BLE001 - raised in its caller's thread
                p.error = exc
            p.done = True

    def _write_alone(self, intake: Intake) -> Written:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return self._write(conn, intake)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise Refused("the store refused the rows (a concurrent write): resend later",
                                  "", "206", "AR") from None
            except sa.exc.SQLAlchemyError as exc:
                log.warning("intake: store unavailable: %s", type(getattr(exc, "orig", exc)).__name__)
                raise Refused("the store is unavailable: resend later", "", "207", "AR") from None
        raise AssertionError("unreachable")

    def _write(self, conn, intake: Intake) -> Written:
        h = intake.header
        m = intake_message.c
        seen = conn.execute(sa.select(intake_message.c.unique_id).where(
            m.sender == h.sender, m.control_id == h.control_id, m.digest == intake.digest)).first()
        known = self._known(conn, intake.unique_id)
        if seen is not None and known is not None:
            return Written(known.document_id, known.version, intake.action, True)
        now = dt.datetime.now()
        if intake.action == DELETION:
            written = self._delete(conn, intake, known, now)
        else:
            if known is not None:
                if known.cda_sha256 != intake.cda_digest:
                    raise Refused("this document version (CDA id) was already received with another content: a "
                                  "new version needs a new id", "OBX^1^5", "205")
                return Written(known.document_id, known.version, intake.action, True)
            written = self._add(conn, intake, now)
        conn.execute(sa.insert(intake_message), dict(sender=h.sender, control_id=h.control_id, digest=intake.digest,
                                                     action=intake.action, unique_id=intake.unique_id, received_at=now))
        return written

    @staticmethod
    def _known(conn, unique_id: str):
        return conn.execute(sa.select(intake_document).where(intake_document.c.unique_id == unique_id)).first()

    def _add(self, conn, intake: Intake, now: dt.datetime) -> Written:
        if intake.action == INITIAL:
            chain = self._chain(conn, intake) if intake.set_id else None
            if chain is not None:
                raise Refused("an initial transmission of a document already received (same setId): send it as a "
                              "replacement (T10/RO/C)", "OBX^1^5", "205")
            document_id = intake.set_id if intake.set_id and len(intake.set_id) <= 64 else intake.unique_id
            if len(document_id) > 64:
                raise Refused("the document id is longer than the store's 64 characters", "OBX^1^5", "102")
            version = 1
        else:
            assert intake.action == REPLACEMENT
            parent = self._known(conn, intake.parent_id) if intake.parent_id else None
            chain = parent or self._chain(conn, intake)
            if chain is None:
                raise Refused("the replaced document (TXA-13 / relatedDocument) was never received here",
                              "TXA^1^13", "204")
            document_id = chain.document_id
            version = 1 + conn.execute(sa.select(sa.func.max(intake_document.c.version)).where(
                intake_document.c.document_id == document_id)).scalar()
        self._upsert_patient(conn, intake.patient)
        row = {k: v for k, v in intake.document.items() if k != "destined_to_dmp"}
        if not intake.document["destined_to_dmp"]:
            row["status"] = NOT_FOR_DMP
        conn.execute(sa.insert(contract.dmp_document), dict(
            document_id=document_id, version=version, patient_id=intake.patient["patient_id"], content=intake.cda,
            updated_at=now, **row))
        conn.execute(sa.insert(intake_document), dict(
            unique_id=intake.unique_id, document_id=document_id, version=version, set_id=intake.set_id,
            cda_sha256=intake.cda_digest, received_at=now))
        return Written(document_id, version, intake.action, False)

    @staticmethod
    def _chain(conn, intake: Intake):
        """A version already received of the same document, by the CDA's setId."""
        return conn.execute(sa.select(intake_document).where(intake_document.c.set_id == intake.set_id)
                            .limit(1)).first() if intake.set_id else None

    def _delete(self, conn, intake: Intake, known, now: dt.datetime) -> Written:
        if known is None:
            raise Refused("the document to delete (its CDA id) was never received here", "OBX^1^5", "204")
        d = contract.dmp_document.c
        key = (d.document_id == known.document_id) & (d.version == known.version)
        patient = conn.execute(sa.select(d.patient_id).where(key)).scalar()
        if patient != intake.patient["patient_id"]:
            raise Refused("the document to delete belongs to another patient (PID-3)", "PID^1^3", "207")
        if known.cancelled_at is not None:
            return Written(known.document_id, known.version, DELETION, True)
        conn.execute(sa.update(contract.dmp_document).where(key).values(status="CANCELLED", updated_at=now))
        conn.execute(sa.update(intake_document).where(intake_document.c.unique_id == known.unique_id)
                     .values(cancelled_at=now))
        return Written(known.document_id, known.version, DELETION, False)

    @staticmethod
    def _upsert_patient(conn, patient: dict) -> None:
        """The patient's identity as the latest message gives it; opposition (not in HL7 messages) is kept."""
        p = contract.dmp_patient
        key = p.c.patient_id == patient["patient_id"]
        values = {k: v for k, v in patient.items() if k != "patient_id"}
        if conn.execute(sa.select(p.c.patient_id).where(key)).first() is None:
            conn.execute(sa.insert(p), dict(patient_id=patient["patient_id"], opposed_to_feeding=False, **values))
        elif values:  # a sidecar may name a known patient by its id alone
            conn.execute(sa.update(p).where(key), values)


def _wal(dbapi_connection, _record) -> None:
    """A SQLite store in WAL mode (it stays so): a commit is one fsync of the log instead of the rollback journal's
    create, fsyncs and delete (30 -> 9 ms per 50 KB message on this machine's disk), and a run reading the store
    no longer blocks the listener's commits. synchronous=FULL: a commit is durable when it returns, as before.
    journal_size_limit: the log goes back to 64 MB after a checkpoint (it kept the size of its biggest transaction)."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=FULL")
    dbapi_connection.execute("PRAGMA journal_size_limit=67108864")


def _lz4_toast(dbapi_connection, _record) -> None:
    """PostgreSQL compresses a big value (TOAST) with pglz by default: on a CDA carrying a base64 PDF it spends
    ~25 ms per megabyte of server CPU to give up (base64 saves at most the 25 % pglz requires), in the commit
    the ACK waits for. lz4 (PostgreSQL 14+, if built with it) gives up or compresses in ~1 ms; the value reads the
    same. Without it, pglz stays (said once per connection at INFO)."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # SET is transactional: outside the first write's transaction
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET default_toast_compression = 'lz4'")
    except Exception as exc:  # noqa: BLE001 - the DBAPI's error: an older or lz4-less server
        log.info("intake: the store keeps PostgreSQL's default TOAST compression (lz4: %s)", type(exc).__name__)
    finally:
        dbapi_connection.autocommit = autocommit
