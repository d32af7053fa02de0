"""The ledger: what we did with each store document, each submission set, each run, each DMP transaction.

All times are naive UTC. Every write that matters for delivery (a submission's ids before sending, its outcome
after) is its own committed transaction, so a crash at any point leaves a state the next run can settle.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sqlalchemy as sa

from connector import private
from connector.errors import LedgerError
from connector.ledger import migrate
from connector.ledger.schema import (
    APPROVED,
    DELETED,
    DEFERRED,
    DEPRECATED,
    FAILED,
    FEED,
    FED,
    REPLACE,
    PENDING,
    SKIPPED,
    SUBMITTING,
    WITHDRAWN,
    ITI41,
    audit,
    certificates,
    documents,
    holds,
    runs,
    submission_documents,
    submissions,
    write_back_pending,
)


CODE_LENGTH = 64  # submissions.error_code, documents.reason, audit.error_code

# The statements of every submission, built once: SQLAlchemy then reuses their compiled form without
# rebuilding and re-keying them per call (a third of the ledger's CPU when they were built per call).
_S, _D = submissions, documents
_COUNT_ATTEMPT = (
    sa.update(_S).where(_S.c.id == sa.bindparam("sub_id"))
    .values(attempts=_S.c.attempts + 1, updated_at=sa.bindparam("now")),
    sa.update(_D).where(_D.c.submission_id == sa.bindparam("sub_id")).values(attempts=_D.c.attempts + 1),
)
_SETTLE_SUBMISSION = sa.update(_S).where(_S.c.id == sa.bindparam("sub_id")).values(
    state=sa.bindparam("state"), outcome=sa.bindparam("outcome"), error_code=sa.bindparam("error_code"),
    error_message=sa.bindparam("error_message"), updated_at=sa.bindparam("now"), lease_owner=None, lease_until=None)
_SETTLE_DOCUMENTS = sa.update(_D).where(_D.c.submission_id == sa.bindparam("sub_id")).values(
    state=sa.bindparam("state"), updated_at=sa.bindparam("now"), next_attempt_at=sa.bindparam("next_attempt_at"),
    reason=sa.bindparam("reason"), detail=sa.bindparam("detail"),
    # the first feeding's time stays (a replacement of the same version does not move it: EXI 08 counts from it)
    fed_at=sa.func.coalesce(_D.c.fed_at, sa.bindparam("fed_at", type_=_D.c.fed_at.type)))
_AUDIT = sa.insert(audit)
_DOCUMENT_STATES = sa.select(_D.c.document_id, _D.c.version, _D.c.state, _D.c.reason).where(
    _D.c.document_id.in_(sa.bindparam("ids", expanding=True)))
_UPDATE_DECISION = sa.update(_D).where(_D.c.document_id == sa.bindparam("key_id"),
                                       _D.c.version == sa.bindparam("key_version"))
_SUBMISSION_BY_UID = sa.select(_S.c.id, _S.c.state).where(_S.c.submission_set_uid == sa.bindparam("uid"))
_NEW_SUBMISSION = sa.insert(_S)
_NEW_SUBMISSION_DOCUMENTS = sa.insert(submission_documents)
_JOURNAL_DOCUMENTS = (
    sa.update(_D)
    .where(_D.c.document_id == sa.bindparam("key_id"), _D.c.version == sa.bindparam("key_version"))
    .values(state=SUBMITTING, reason=None, detail=None, submission_id=sa.bindparam("sub_id"),
            updated_at=sa.bindparam("now"), last_run_id=sa.bindparam("run_id"),
            # a correction of a fed version starts its own lifetime (dmp.retry.lifetime_days)
            first_attempt_at=sa.case((_D.c.state == FED, sa.bindparam("now")),
                                     else_=sa.func.coalesce(_D.c.first_attempt_at, sa.bindparam("now"))))
)
_BY_KEY = (_D.c.document_id == sa.bindparam("key_id")) & (_D.c.version == sa.bindparam("key_version"))
_DEPRECATE_ENTRY = sa.update(_D).where(_BY_KEY).values(dmp_status=DEPRECATED, updated_at=sa.bindparam("now"))
_APPROVE_ENTRY = sa.update(_D).where(_BY_KEY).values(
    dmp_status=APPROVED, dmp_entry_uuid=sa.bindparam("entry_uuid"), masking=sa.bindparam("masking"),
    unique_id=sa.bindparam("uid"), cda_version=sa.bindparam("cda_version"))
_SUBMISSION = sa.select(_S).where(_S.c.id == sa.bindparam("sub_id"))
_SUBMISSION_DOCUMENTS = (
    sa.select(submission_documents.c.document_id, submission_documents.c.version,
              submission_documents.c.unique_id, submission_documents.c.entry_uuid, submission_documents.c.action,
              submission_documents.c.cda_version, submission_documents.c.masking,
              submission_documents.c.replaces_version, submission_documents.c.replaces_unique_id,
              submission_documents.c.replaces_entry_uuid)
    .where(submission_documents.c.submission_id == sa.bindparam("sub_id"))
    .order_by(submission_documents.c.document_id, submission_documents.c.version)
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


@dataclass(frozen=True)
class DocState:
    document_id: str
    version: int
    state: str | None  # None: never seen by a run, only held by an operator
    reason: str | None
    held: bool
    next_attempt_at: dt.datetime | None
    submission_id: int | None
    # Its DMP entry (migration 0007): status there (Approved, Deprecated, Deleted; None: not in the DMP), entryUUID,
    # the masking codes and CDA versionNumber it carries, when it was fed.
    dmp_status: str | None = None
    dmp_entry_uuid: str | None = None
    masking: str | None = None
    cda_version: int | None = None
    fed_at: dt.datetime | None = None
    # the uniqueId of its DMP entry as sent (a pass-through CDA's is its own id); None: not recorded (older
    # ledgers), the one `ids.document_unique_id` derives
    dmp_unique_id: str | None = None


@dataclass(frozen=True)
class SubmissionDoc:
    document_id: str
    version: int
    unique_id: str
    entry_uuid: str
    # Migration 0007: what the entry does (FEED, REPLACE, WITHDRAW), the CDA versionNumber and masking codes sent
    # (None: the store version, the store's flags), and for a replacement or a withdrawal the entry it acts on:
    # its store version, uniqueId and entryUUID as the registry gave it.
    action: str = FEED
    cda_version: int | None = None
    masking: str | None = None
    replaces_version: int | None = None
    replaces_unique_id: str | None = None
    replaces_entry_uuid: str | None = None


@dataclass(frozen=True)
class SubmissionRecord:
    id: int
    submission_set_uid: str
    entry_uuid: str
    patient_id: str
    finess_geo: str
    state: str
    submission_time: dt.datetime
    attempts: int
    created_at: dt.datetime
    documents: tuple[SubmissionDoc, ...]
    kind: str = "ITI-41"  # ITI-41 (feed, replace) or ITI-57 (withdraw)
    note: str | None = None  # a withdrawal's reason (EXI 09/10)


BUSY_TIMEOUT_MS = 30000  # how long a SQLite ledger write waits for another process's write lock


class LedgerMissing(LedgerError):
    """No ledger where the configuration says it is (a command that reads it never creates an empty one)."""


def open_ledger(url: str, *, auto_migrate: bool | None = None, create: bool = True,
                migrate_apart: bool = False) -> "Ledger":
    """Connect; SQLite ledgers are created and migrated automatically, PostgreSQL ones need `db upgrade`.
    Whatever makes the ledger unusable, now or later in the command, is a LedgerError of one line.
    `create=False` (every command but `run`, `daemon` and `db upgrade`): a missing ledger is an error naming
    where it was looked for, never a new empty one reporting zeros. `migrate_apart` (a feeding run): a SQLite
    file is migrated by a child process (`migrate.upgrade_apart`), so the run does not keep Alembic loaded."""
    is_sqlite = url.startswith("sqlite")
    new_file = path = None
    if is_sqlite and "///" in url and not url.endswith(":memory:"):
        path = Path(url.split("///", 1)[1])
        if not create and not path.exists():
            raise LedgerMissing(f"no ledger at {path}: wrong configuration (ledger.url, state_dir), or no run yet")
        _check_sqlite_file(path)
        new_file = None if path.exists() else path
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=not is_sqlite)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise LedgerError(f"ledger URL {sa.engine.make_url(url).drivername}:// cannot be used: {exc}") from None
    if is_sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine, "handle_error", _ledger_error)
    try:
        current = migrate.current(engine)
        if current is None and not create:
            raise LedgerMissing(f"no ledger in {engine.url.render_as_string(hide_password=True)}: wrong configuration "
                                "(ledger.url), or no `dmp-connector db upgrade` / run yet")
        if current != migrate.head():
            if auto_migrate if auto_migrate is not None else is_sqlite:
                if migrate_apart and is_sqlite and path is not None:
                    migrate.upgrade_apart(url)
                else:
                    migrate.upgrade(engine)
            else:
                raise LedgerError(
                    f"ledger schema is at {current or 'nothing'}, expected {migrate.head()}: run `dmp-connector db upgrade`"
                )
    except sa.exc.SQLAlchemyError as exc:
        raise LedgerError(f"ledger database unreachable: {_first_line(exc)}") from None
    if new_file is not None:  # created by this connection with the umask's mode: owner only (patient data)
        private.restrict(new_file, Path(f"{new_file}-wal"), Path(f"{new_file}-shm"), Path(f"{new_file}-journal"))
    return Ledger(engine)


def _check_sqlite_file(path: Path) -> None:
    try:
        private.make_dirs(path.parent)
        if not path.parent.is_dir():
            raise NotADirectoryError(20, "not a folder")
        empty = path.is_file() and path.stat().st_size == 0
    except OSError as exc:
        raise LedgerError(f"ledger folder {path.parent} cannot be used: {exc.strerror}") from None
    if empty:  # SQLite would take it for a new database and start over: the ledger was truncated or lost
        raise LedgerError(f"ledger {path} is an empty file (0 bytes), not a ledger: restore it from a backup, or "
                          "remove it and rebuild it (`dmp-connector db rebuild`)")


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]


def _ledger_error(context) -> None:
    """The database failing under a command (disk full, I/O error, locked past the busy timeout, corrupted, read
    only) ends it with one line naming the ledger, exit 4. Integrity errors (a race another path settles) and
    lost connections (the pool reconnects) are left to the code that expects them."""
    exc = context.sqlalchemy_exception
    if context.is_disconnect or getattr(context, "is_pre_ping", False):
        return
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InternalError)) or type(exc) is sa.exc.DatabaseError:
        raise LedgerError(f"ledger database failed: {_first_line(exc)}") from exc


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (status) never block the run
    cur.execute("PRAGMA synchronous=FULL")  # durable before acknowledged
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Ledger:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    # --- runs ------------------------------------------------------------------------------

    def start_run(self, mode: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                sa.insert(runs).values(
                    mode=mode, status="running", started_at=utcnow(), host=socket.gethostname(), pid=os.getpid()
                )
            ).inserted_primary_key[0]

    def finish_run(self, run_id: int, status: str, counts: dict, message: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=utcnow(), counts=counts, message=message)
            )

    # --- documents -------------------------------------------------------------------------

    def states(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], DocState]:
        """Ledger state of the given documents (absent ones are new)."""
        keys = list(keys)
        if not keys:
            return {}
        d = documents
        ids = sorted({k[0] for k in keys})
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    d.c.document_id, d.c.version, d.c.state, d.c.reason, d.c.held, d.c.next_attempt_at, d.c.submission_id,
                    d.c.dmp_status, d.c.dmp_entry_uuid, d.c.masking, d.c.cda_version, d.c.fed_at, d.c.unique_id,
                ).where(d.c.document_id.in_(ids))
            ).all()
            held = conn.execute(sa.select(holds.c.document_id, holds.c.version)
                                .where(holds.c.document_id.in_(ids))).all() if self._has_holds(conn) else []
        found = {(r.document_id, r.version): DocState(*r) for r in rows}
        # A hold by id (every version) or id and version counts whether or not a run has seen the document: an
        # unseen one gets a state-less entry, so the scan skips it as HELD (and records it so).
        every = {h.document_id for h in held if h.version is None}
        one = {(h.document_id, h.version) for h in held if h.version is not None}
        for key in keys:
            if key[0] in every or key in one:
                state = found.get(key)
                found[key] = (DocState(key[0], key[1], None, None, True, None, None) if state is None
                              else dataclasses.replace(state, held=True))
        return found

    def _has_holds(self, conn) -> bool:
        """Whether any hold exists (one indexed probe; most ledgers have none)."""
        return conn.execute(sa.select(holds.c.id).limit(1)).first() is not None

    def record_decisions(self, rows: list[dict], run_id: int) -> collections.Counter:
        """Upsert the scan's decisions: SKIPPED (with reason) or PENDING. Never touches a document that is
        FED, SUBMITTING or FAILED: those states are only left through a submission outcome or a replay.
        Returns the skip reasons recorded anew (a new document, or one whose reason changed), by reason."""
        fresh: collections.Counter = collections.Counter()
        if not rows:
            return fresh
        now = utcnow()
        with self.engine.begin() as conn:
            ids = sorted({r["document_id"] for r in rows})
            found = conn.execute(_DOCUMENT_STATES, dict(ids=ids)).all()
            existing = {(r.document_id, r.version): r.state for r in found}
            before = {(r.document_id, r.version): r.reason for r in found}
            new, changed = [], []
            for row in rows:
                key = (row["document_id"], row["version"])
                values = dict(state=row["state"], reason=row.get("reason"), detail=row.get("detail"),
                              updated_at=now, last_run_id=run_id,
                              finess_geo=row.get("finess_geo"), type_code=row.get("type_code"))
                if key not in existing:  # another instance may record the same new document at the same moment
                    new.append(dict(document_id=key[0], version=key[1], patient_id=row["patient_id"],
                                    first_seen_at=now, **values))
                elif existing[key] in (PENDING, SKIPPED, DEFERRED) and not (
                    existing[key] == DEFERRED and row["state"] == PENDING
                ):
                    changed.append(dict(key_id=key[0], key_version=key[1], **values))
                else:
                    continue
                if row["state"] == SKIPPED and (key not in existing or before[key] != row.get("reason")):
                    fresh[row.get("reason")] += 1
            if new:  # one statement each, executed for many rows
                conn.execute(self._insert_new, new)
            if changed:
                conn.execute(_UPDATE_DECISION, changed)
        return fresh

    @functools.cached_property
    def _insert_new(self):
        """INSERT INTO documents … ON CONFLICT DO NOTHING (the ledger is SQLite or PostgreSQL)."""
        from sqlalchemy.dialects import postgresql, sqlite

        return (postgresql if self.is_postgresql else sqlite).insert(documents).on_conflict_do_nothing()

    def fail_documents(self, keys: list[tuple[str, int]], reason: str, detail: str, run_id: int,
                       patient_id: str, finess_geo: str | None = None) -> None:
        """A document that can never be sent as is (CDA_INVALID, METADATA_INVALID, …): FAILED, needs a human."""
        now = utcnow()
        d = documents
        with self.engine.begin() as conn:
            for key in keys:
                values = dict(state=FAILED, reason=reason, detail=detail[:1000], updated_at=now, last_run_id=run_id)
                if conn.execute(sa.update(d).where(d.c.document_id == key[0], d.c.version == key[1]).values(**values)).rowcount == 0:
                    conn.execute(sa.insert(d).values(document_id=key[0], version=key[1], patient_id=patient_id,
                                                     finess_geo=finess_geo, first_seen_at=now, **values))

    # --- submissions -----------------------------------------------------------------------

    def journal_submission(self, *, submission_set_uid: str, entry_uuid: str, patient_id: str, finess_geo: str,
                           submission_time: dt.datetime, docs: list[SubmissionDoc], run_id: int,
                           owner: str, lease: dt.timedelta, kind: str = ITI41,
                           note: str | None = None) -> SubmissionRecord | None:
        """Write-ahead: commit the submission's ids, claimed by `owner`, and mark its documents SUBMITTING
        before anything is sent. The ids are deterministic from the documents, so an existing row with the
        same uid is the same submission: it is reused as recorded (ids and submission time), never regenerated.
        Returns None when another live instance holds it (or it is already settled)."""
        now = utcnow()
        created = None  # a new row: its record is what was inserted (not read back: two queries per submission)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(_SUBMISSION_BY_UID, dict(uid=submission_set_uid)).first()
                if row is None:
                    note = note and note[:1000]
                    sub_id = conn.execute(_NEW_SUBMISSION, dict(
                        submission_set_uid=submission_set_uid, entry_uuid=entry_uuid, patient_id=patient_id,
                        finess_geo=finess_geo, state=SUBMITTING, submission_time=submission_time, created_at=now,
                        updated_at=now, attempts=0, run_id=run_id, lease_owner=owner,
                        lease_until=now + lease, kind=kind, note=note)).inserted_primary_key[0]
                    conn.execute(_NEW_SUBMISSION_DOCUMENTS, [dict(submission_id=sub_id, **doc.__dict__) for doc in docs])
                    created = SubmissionRecord(sub_id, submission_set_uid, entry_uuid, patient_id, finess_geo, SUBMITTING,
                                               submission_time, 0, now,
                                               tuple(sorted(docs, key=lambda d: (d.document_id, d.version))), kind, note)
                else:
                    sub_id = row.id
                    # FAILED (or withdrawn) sets are sent again with their ids when their documents are eligible
                    # again: if an earlier attempt did reach the DMP, the registry's duplicate answer is settled by ITI-18.
                    if row.state == FED or not self._claim(conn, sub_id, owner, lease, now, run_id):
                        return None
                conn.execute(_JOURNAL_DOCUMENTS, [dict(key_id=doc.document_id, key_version=doc.version, unique_id=doc.unique_id,
                                                       sub_id=sub_id, now=now, run_id=run_id) for doc in docs])
        except sa.exc.IntegrityError:
            return None  # another instance journaled the same submission set at the same moment: it is theirs
        return created or self.submission(sub_id)

    @staticmethod
    def _claim(conn, sub_id: int, owner: str, lease: dt.timedelta, now: dt.datetime, run_id: int) -> bool:
        """Atomically take a submission whose lease is free, expired, or already ours."""
        s = submissions
        return conn.execute(
            sa.update(s)
            .where(s.c.id == sub_id,
                   sa.or_(s.c.lease_owner.is_(None), s.c.lease_until < now, s.c.lease_owner == owner))
            .values(lease_owner=owner, lease_until=now + lease, state=SUBMITTING, updated_at=now, run_id=run_id)
        ).rowcount == 1

    def claim_open_submissions(self, owner: str, lease: dt.timedelta, run_id: int, *, limit: int = 100,
                               now: dt.datetime | None = None) -> list[int]:
        """Claim submissions to settle or resend: left SUBMITTING by a crash or an unknown outcome (once their
        lease is free, expired or ours), and DEFERRED ones that are due; oldest first. On PostgreSQL the rows
        are picked with FOR UPDATE SKIP LOCKED, so concurrent instances never claim the same one."""
        now = now or utcnow()
        s, d = submissions, documents
        due = sa.select(d.c.submission_id).where(d.c.state == DEFERRED, d.c.next_attempt_at <= now)
        held = sa.select(d.c.submission_id).where(d.c.held == sa.true(), d.c.submission_id.is_not(None))
        free = sa.or_(s.c.lease_owner.is_(None), s.c.lease_until < now, s.c.lease_owner == owner)
        not_this_run = sa.or_(s.c.run_id.is_(None), s.c.run_id != run_id)  # ours in flight are never re-claimed
        query = (sa.select(s.c.id)
                 .where(free, not_this_run, sa.or_(
                     s.c.state == SUBMITTING,  # to settle (ITI-18) even if held: it may have reached the DMP
                     sa.and_(s.c.state == DEFERRED, s.c.id.in_(due), s.c.id.not_in(held))))
                 .order_by(s.c.id).limit(limit))
        if self.is_postgresql:
            query = query.with_for_update(skip_locked=True, of=s)
        with self.engine.begin() as conn:
            ids = list(conn.execute(query).scalars())
            return [i for i in ids if self._claim(conn, i, owner, lease, now, run_id)]

    def submission(self, sub_id: int) -> SubmissionRecord:
        with self.engine.connect() as conn:
            r = conn.execute(_SUBMISSION, dict(sub_id=sub_id)).one()
            docs = conn.execute(_SUBMISSION_DOCUMENTS, dict(sub_id=sub_id)).all()
        return SubmissionRecord(r.id, r.submission_set_uid, r.entry_uuid, r.patient_id, r.finess_geo, r.state,
                                r.submission_time, r.attempts, r.created_at, tuple(SubmissionDoc(*x) for x in docs),
                                r.kind, r.note)

    def record_attempt(self, sub_id: int) -> None:
        with self.engine.begin() as conn:
            for statement in _COUNT_ATTEMPT:
                conn.execute(statement, dict(sub_id=sub_id, now=utcnow()))

    def settle_submission(self, sub_id: int, *, state: str, outcome: str, error_code: str | None = None,
                          error_message: str | None = None, next_attempt_at: dt.datetime | None = None,
                          reason: str | None = None) -> None:
        """Record a submission's final or deferred outcome on it and on its documents, in one transaction."""
        now = utcnow()
        detail = (error_message or None) and error_message[:1000]
        # The DMP chooses its codes' length: a code longer than the columns is cut, never lost with the outcome.
        error_code, reason = error_code and error_code[:CODE_LENGTH], reason and reason[:CODE_LENGTH]
        with self.engine.begin() as conn:
            conn.execute(_SETTLE_SUBMISSION, dict(sub_id=sub_id, state=state, outcome=outcome, error_code=error_code,
                                                  error_message=error_message and error_message[:2000], now=now))
            conn.execute(_SETTLE_DOCUMENTS, dict(
                sub_id=sub_id, state=state, now=now, next_attempt_at=next_attempt_at,
                reason=None if state == FED else reason, detail=detail,
                fed_at=now if state == FED else None))  # a document's fed_at is only ever set by a FED outcome
            if state == FED:
                self._record_dmp_entries(conn, sub_id, now)

    @staticmethod
    def _record_dmp_entries(conn, sub_id: int, now: dt.datetime) -> None:
        """A FED submission's entries are Approved in the DMP under their ids, with the codes and CDA version sent;
        the entries they replace are Deprecated there (the registry does so on an accepted RPLC)."""
        approved = []  # executed as one statement for many rows, flushed before a deprecation to keep the order
        for row in conn.execute(_SUBMISSION_DOCUMENTS, dict(sub_id=sub_id)).all():
            doc = SubmissionDoc(*row)
            if doc.action == REPLACE and doc.replaces_version is not None and doc.replaces_version != doc.version:
                if approved:
                    conn.execute(_APPROVE_ENTRY, approved)
                    approved = []
                conn.execute(_DEPRECATE_ENTRY, dict(key_id=doc.document_id, key_version=doc.replaces_version, now=now))
            approved.append(dict(key_id=doc.document_id, key_version=doc.version, entry_uuid=doc.entry_uuid,
                                 masking=doc.masking, uid=doc.unique_id,
                                 cda_version=doc.cda_version if doc.cda_version is not None else doc.version))
        if approved:
            conn.execute(_APPROVE_ENTRY, approved)

    def settle_withdrawal(self, sub_id: int, *, outcome: str, message: str) -> None:
        """A withdrawal (ITI-57) done: its document version is Deleted in the DMP. The document stays FED (it
        was fed; its fed_at stays), with the reason WITHDRAWN and the operator's or the store's reason."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(_SETTLE_SUBMISSION, dict(sub_id=sub_id, state=FED, outcome=outcome, error_code=None,
                                                  error_message=message[:2000], now=now))
            conn.execute(sa.update(documents).where(documents.c.submission_id == sub_id).values(
                state=FED, dmp_status=DELETED, reason=WITHDRAWN, detail=message[:1000], updated_at=now,
                next_attempt_at=None))

    def record_dmp_status(self, key: tuple[str, int], status: str, entry_uuid: str | None = None) -> None:
        """What the registry said of a version's entry (ITI-18), when it differs from what the ledger thought."""
        values = dict(dmp_status=status, updated_at=utcnow())
        if entry_uuid:
            values["dmp_entry_uuid"] = entry_uuid
        with self.engine.begin() as conn:
            conn.execute(sa.update(documents).where(documents.c.document_id == key[0], documents.c.version == key[1])
                         .values(**values))

    def withdraw_submission(self, sub_id: int, reason: str, detail: str) -> None:
        """A submission whose documents are no longer eligible (opposition, death… since it was journaled) and
        that the DMP does not hold: it is not sent; its documents are SKIPPED with the reason, re-evaluated
        at every run like any skip."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(sa.update(submissions).where(submissions.c.id == sub_id).values(
                state=FAILED, outcome="withdrawn", error_code=reason, error_message=detail[:2000], updated_at=now,
                lease_owner=None, lease_until=None))
            conn.execute(sa.update(documents).where(documents.c.submission_id == sub_id).values(
                state=SKIPPED, reason=reason, detail=detail[:1000], updated_at=now, next_attempt_at=None))

    def submission_error_code(self, sub_id: int) -> str | None:
        """The error code the submission was last settled with (None if none)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(submissions.c.error_code).where(submissions.c.id == sub_id)).scalar()

    def first_attempt_at(self, sub_id: int) -> dt.datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(documents.c.first_attempt_at))
                                .where(documents.c.submission_id == sub_id)).scalar()

    # --- audit (EXI 16) --------------------------------------------------------------------

    def audit(self, *, run_id: int | None, action: str, outcome: str, finess_geo: str | None = None,
              rpps: str | None = None, submission_set_uid: str | None = None, document_ids: Iterable[str] = (),
              error_code: str | None = None, message: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(_AUDIT, dict(
                at=utcnow(), run_id=run_id, action=action, outcome=outcome, finess_geo=finess_geo, rpps=rpps,
                submission_set_uid=submission_set_uid, document_ids=",".join(document_ids)[:2000] or None,
                error_code=error_code and error_code[:CODE_LENGTH], message=message and message[:2000]))

    # --- holds (`dmp-connector hold` / `release`) ------------------------------------------------

    def hold(self, document_id: str, version: int | None) -> bool:
        """Hold a document id (every version) or one version, seen by a run or not. False: it already was."""
        h = holds
        with self.engine.begin() as conn:
            same = conn.execute(sa.select(h.c.id).where(
                h.c.document_id == document_id,
                h.c.version.is_(None) if version is None else h.c.version == version)).first()
            if same is None:
                conn.execute(sa.insert(h).values(document_id=document_id, version=version, held_at=utcnow()))
            self._sync_held(conn, document_id)
        return same is None

    def release(self, document_id: str, version: int | None) -> int:
        """Remove the holds on a document id (every hold of it) or on one version; returns how many."""
        h = holds
        query = sa.delete(h).where(h.c.document_id == document_id)
        if version is not None:
            query = query.where(h.c.version == version)
        with self.engine.begin() as conn:
            n = conn.execute(query).rowcount
            self._sync_held(conn, document_id)
        return n

    def holds_of(self, document_id: str) -> list[int | None]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(holds.c.version).where(holds.c.document_id == document_id)).scalars())

    @staticmethod
    def _sync_held(conn, document_id: str) -> None:
        """documents.held follows the holds (a held deferred submission is not claimed by a run)."""
        h, d = holds, documents
        covered = sa.exists().where(h.c.document_id == d.c.document_id,
                                    sa.or_(h.c.version.is_(None), h.c.version == d.c.version))
        conn.execute(sa.update(d).where(d.c.document_id == document_id).values(held=covered))

    # --- write-back to the store's dmp_feed_status -----------------------------------------

    def write_back_failed(self, keys: Iterable[tuple[str, int]], error: str) -> None:
        """Remember documents whose dmp_feed_status row could not be written: every run retries them."""
        w, now = write_back_pending, utcnow()
        with self.engine.begin() as conn:
            for document_id, version in keys:
                key = (w.c.document_id == document_id) & (w.c.version == version)
                if conn.execute(sa.update(w).where(key).values(attempts=w.c.attempts + 1,
                                                               last_error=error[:300])).rowcount == 0:
                    conn.execute(sa.insert(w).values(document_id=document_id, version=version, since=now,
                                                     attempts=1, last_error=error[:300]))

    def write_back_done(self, keys: Iterable[tuple[str, int]]) -> None:
        w = write_back_pending
        with self.engine.begin() as conn:
            for document_id, version in keys:
                conn.execute(sa.delete(w).where(w.c.document_id == document_id, w.c.version == version))

    def write_back_rows(self, *, pending_only: bool = True, limit: int | None = None,
                        after: tuple[str, int] | None = None) -> list[dict]:
        """dmp_feed_status rows as the ledger says they should be: the pending ones, or every FED and FAILED
        document (`dmp-connector write-back --all`)."""
        d, sd, w = documents, submission_documents, write_back_pending
        query = (sa.select(d.c.document_id, d.c.version, d.c.state, d.c.fed_at, d.c.reason, d.c.detail,
                           d.c.dmp_status, sd.c.unique_id)
                 .select_from(d.outerjoin(sd, (sd.c.submission_id == d.c.submission_id)
                                          & (sd.c.document_id == d.c.document_id) & (sd.c.version == d.c.version))))
        if pending_only:
            query = query.join(w, (w.c.document_id == d.c.document_id) & (w.c.version == d.c.version))
        else:
            query = query.where(d.c.state.in_([FED, FAILED]))
        if after is not None:
            query = query.where(sa.tuple_(d.c.document_id, d.c.version) > sa.tuple_(*after))
        query = query.order_by(d.c.document_id, d.c.version).limit(limit)
        with self.engine.connect() as conn:
            return [dict(document_id=r.document_id, version=r.version,
                         status=WITHDRAWN if r.state == FED and r.dmp_status == DELETED else r.state,
                         dmp_unique_id=r.unique_id if r.state == FED else None,
                         fed_at=r.fed_at if r.state == FED else None,
                         last_error=None if r.state == FED else (r.detail or r.reason or "")[:1000])
                    for r in conn.execute(query)]

    def write_back_pending_count(self) -> tuple[int, dt.datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sa.func.count(), sa.func.min(write_back_pending.c.since))).one()
        return row[0], row[1]

    # --- certificates ------------------------------------------------------------------------

    def record_certificates(self, not_after: dict[str, dt.datetime]) -> None:
        """The expiry of the certificates a run loaded (naive UTC), for `status --check` and Prometheus."""
        from sqlalchemy.dialects import postgresql, sqlite

        c, now = certificates, utcnow()
        insert = (postgresql if self.is_postgresql else sqlite).insert
        with self.engine.begin() as conn:
            for purpose, when in not_after.items():  # an upsert: two instances starting together both record it
                values = dict(not_after=when, checked_at=now)
                conn.execute(insert(c).values(purpose=purpose, **values)
                             .on_conflict_do_update(index_elements=[c.c.purpose], set_=values))

    def certificate_expiry(self) -> dict[str, dt.datetime]:
        with self.engine.connect() as conn:
            return {r.purpose: r.not_after for r in conn.execute(sa.select(certificates))}
