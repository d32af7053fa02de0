"""The sandbox DMP's memory: one SQLite file (WAL) that survives restarts. The handler threads share one
connection, one operation at a time (a lock): opening a connection per operation cost more CPU than the
operation itself. Other processes (the report, a restarted sandbox) still see every commit: BEGIN
IMMEDIATE serialises their writes with ours.

Registry rules applied when a checked submission is stored, all in one transaction:
- a submission-set uniqueId already received → XDSDuplicateUniqueIdInRegistry, nothing stored;
- a document uniqueId already received with another hash → XDSNonIdenticalHash, nothing stored;
- a document uniqueId already received with the same hash → accepted (IHE: identical re-registration),
  stored again and flagged `duplicate` — the benchmark's "duplicate delivery" that must stay at 0;
- the patient's DMP: absent → created active when `auto_create_patients` and the INS has a test OID,
  XDSUnknownPatientId otherwise; closed → XDSUnknownPatientId "DMP fermé";
- an entry replacing another (RPLC): the target must exist (UnresolvedReferenceException), be the same
  patient's (XDSPatientIdDoesNotMatch) and Approved (XDSRegistryDeprecatedDocumentError); it becomes Deprecated.

Availability updates (ITI-57, `update`), all in one transaction: the submission-set uniqueId is new
(XDSDuplicateUniqueIdInRegistry), each target exists (UnresolvedReferenceException), is the submission set's
patient's (XDSPatientIDReconciliationError), was fed by the structure asking (XDSMetadataUpdateError: only the
author structure may delete or archive), and is in OriginalStatus and not Deleted (XDSMetadataUpdateError).
Every document carries its availability status (Approved, Deprecated, Deleted, Archived); `lifecycle` journals
each replacement and status change for the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from connector.sandbox.checks import RegistryError, Submission, UpdateRequest

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"

# INS assigning authorities of fictitious patients: test NIR and demonstration NIR.
TEST_INS_OIDS = ("1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11")

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    ins_cx TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'closed')),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    uid TEXT PRIMARY KEY,
    entry_uuid TEXT,
    patient TEXT NOT NULL,
    source_id TEXT,
    finess TEXT,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL,             -- 'stored'
    reply_dropped INTEGER NOT NULL DEFAULT 0  -- committed, then the connection was closed unanswered
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL,
    entry_uuid TEXT,
    submission_uid TEXT NOT NULL REFERENCES submissions(uid),
    patient TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    type_code TEXT,
    finess TEXT,
    is_signature INTEGER NOT NULL DEFAULT 0,
    set_id TEXT,                      -- CDA setId and versionNumber: the producer's document identity
    version TEXT,
    duplicate INTEGER NOT NULL DEFAULT 0,
    stored_at TEXT NOT NULL,
    content BLOB,
    status TEXT NOT NULL DEFAULT 'urn:oasis:names:tc:ebxml-regrep:StatusType:Approved',
    confidentiality TEXT              -- the entry's confidentialityCodes, comma-separated
);
CREATE INDEX IF NOT EXISTS documents_uid ON documents(uid);
CREATE INDEX IF NOT EXISTS documents_patient ON documents(patient);
CREATE INDEX IF NOT EXISTS documents_submission ON documents(submission_uid);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    request TEXT,                     -- WS-Addressing MessageID (or a generated id): groups the errors
    code TEXT NOT NULL,
    check_name TEXT,
    context TEXT,
    location TEXT,
    submission_uid TEXT
);
CREATE TABLE IF NOT EXISTS updates (          -- ITI-57 submission sets received and applied
    uid TEXT PRIMARY KEY,
    entry_uuid TEXT,
    patient TEXT NOT NULL,
    structure TEXT,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lifecycle (        -- each replacement and availability change, in order
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,               -- replacement | status
    target TEXT NOT NULL,             -- entryUUID whose status changed
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    cause TEXT NOT NULL               -- the replacing entry's entryUUID, or the ITI-57 submission set uniqueId
);
CREATE TABLE IF NOT EXISTS injected_faults (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,               -- http-503 | busy (refused before anything was read or stored)
    service TEXT NOT NULL             -- repository | registry
);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def ins_oid(ins_cx: str) -> str | None:
    """The assigning authority OID of a CX `<id>^^^&<oid>&ISO^NH`."""
    parts = ins_cx.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    return authority[1] if len(authority) > 1 else None


class _Refused(Exception):
    def __init__(self, errors: list[RegistryError]):
        self.errors = errors


class SandboxState:
    def __init__(self, path: Path | str, *, keep_content: bool = False, auto_create_patients: bool = True):
        self.path = Path(path)
        self.keep_content = keep_content
        self.auto_create_patients = auto_create_patients
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        with self._read() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(documents)")}
            if "status" not in columns:  # a state file from before availability statuses: all were Approved
                db.execute(f"ALTER TABLE documents ADD COLUMN status TEXT NOT NULL DEFAULT '{APPROVED}'")
            if "confidentiality" not in columns:  # a state file from before the entries' codes were recorded
                db.execute("ALTER TABLE documents ADD COLUMN confidentiality TEXT")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:  # (re)opened on first use, so a closed state can still be read
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")  # a commit the client never heard of must survive a crash
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            finally:
                if db.in_transaction:  # an exception, or a failed COMMIT: the shared connection must not stay in it
                    db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connection()

    # --- patients ------------------------------------------------------------------------------

    def set_patient(self, ins_cx: str, status: str = "active") -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO patients (ins_cx, status, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(ins_cx) DO UPDATE SET status = excluded.status",
                (ins_cx, status, _now()),
            )

    def patient_status(self, ins_cx: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT status FROM patients WHERE ins_cx = ?", (ins_cx,)).fetchone()
        return row["status"] if row else None

    def _patient_errors(self, db: sqlite3.Connection, ins_cx: str) -> list[RegistryError]:
        row = db.execute("SELECT status FROM patients WHERE ins_cx = ?", (ins_cx,)).fetchone()
        if row is None:
            if self.auto_create_patients and ins_oid(ins_cx) in TEST_INS_OIDS:
                db.execute(
                    "INSERT INTO patients (ins_cx, status, created_at) VALUES (?, 'active', ?)", (ins_cx, _now())
                )
                return []
            return [RegistryError("XDSUnknownPatientId", "DMP inexistant pour ce patient", check="patient.unknown")]
        if row["status"] == "closed":
            return [RegistryError("XDSUnknownPatientId", "DMP fermé", check="patient.closed")]
        return []

    # --- submissions ---------------------------------------------------------------------------

    def store(self, submission: Submission, *, reply_dropped: bool = False) -> list[RegistryError]:
        """Store a checked submission all-or-nothing; the registry errors that refused it, else []."""
        try:
            self._store(submission, reply_dropped)
        except _Refused as refused:
            return refused.errors
        return []

    def _store(self, submission: Submission, reply_dropped: bool) -> None:
        with self._transaction() as db:
            errors = self._patient_errors(db, submission.patient)
            if db.execute("SELECT 1 FROM submissions WHERE uid = ?", (submission.uid,)).fetchone():
                errors.append(
                    RegistryError(
                        "XDSDuplicateUniqueIdInRegistry",
                        "uniqueId du lot de soumission déjà reçu",
                        submission.uid,
                        check="duplicate.submission_set",
                    )
                )
            duplicates = set()
            for entry in submission.entries:
                hashes = {r["hash"] for r in db.execute("SELECT hash FROM documents WHERE uid = ?", (entry.uid,))}
                if hashes - {entry.hash}:
                    errors.append(
                        RegistryError(
                            "XDSNonIdenticalHash",
                            "uniqueId de document déjà reçu avec un autre contenu (hash différent)",
                            entry.uid,
                            check="duplicate.document_hash",
                        )
                    )
                elif hashes:
                    duplicates.add(entry.uid)
            replaced = self._replacement_targets(db, submission, errors)
            if errors:  # roll back, an auto-created patient too: nothing of a refused request stays
                raise _Refused(errors)
            now = _now()
            db.execute(
                "INSERT INTO submissions (uid, entry_uuid, patient, source_id, finess, received_at, status,"
                " reply_dropped) VALUES (?, ?, ?, ?, ?, ?, 'stored', ?)",
                (submission.uid, submission.entry_uuid, submission.patient, submission.source_id,
                 submission.finess, now, int(reply_dropped)),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO documents (uid, entry_uuid, submission_uid, patient, hash, size, type_code, finess,"
                " is_signature, set_id, version, duplicate, stored_at, content, confidentiality)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.uid, e.entry_uuid, submission.uid, e.patient, e.hash, e.size, e.type_code, e.finess,
                     int(e.is_signature), e.set_id, e.version, int(e.uid in duplicates), now,
                     e.content if self.keep_content else None, e.confidentiality)
                    for e in submission.entries
                ],
            )  # fmt: skip
            for entry, target in replaced:
                self._set_status(db, target, DEPRECATED, "replacement", entry.entry_uuid, now)

    def _replacement_targets(self, db: sqlite3.Connection, submission: Submission, errors: list[RegistryError]):
        """[(entry, target row)] of the submission's RPLC associations; what refuses one goes to `errors`."""
        found = []
        for entry in submission.entries:
            if not entry.replaces:
                continue
            target = _entry(db, entry.replaces)
            if target is None:
                errors.append(RegistryError("UnresolvedReferenceException", "RPLC: entrée remplacée inconnue",
                                            entry.replaces, check="replace.unknown"))
            elif target["patient"] != submission.patient:
                errors.append(RegistryError("XDSPatientIdDoesNotMatch", "RPLC: entrée remplacée d'un autre patient",
                                            entry.replaces, check="replace.patient"))
            elif target["status"] != APPROVED:
                errors.append(RegistryError(
                    "XDSRegistryDeprecatedDocumentError",
                    f"RPLC: entrée remplacée au statut {target['status'].rsplit(':', 1)[-1]}, pas Approved",
                    entry.replaces, check="replace.not_approved"))
            else:
                found.append((entry, target))
        return found

    @staticmethod
    def _set_status(db: sqlite3.Connection, target: sqlite3.Row, status: str, kind: str, cause: str, now: str) -> None:
        db.execute("UPDATE documents SET status = ? WHERE entry_uuid = ? AND is_signature = 0", (status, target["entry_uuid"]))
        db.execute("INSERT INTO lifecycle (at, kind, target, old_status, new_status, cause) VALUES (?, ?, ?, ?, ?, ?)",
                   (now, kind, target["entry_uuid"], target["status"], status, cause))

    # --- ITI-57 availability updates -------------------------------------------------------------

    def update(self, request: UpdateRequest) -> list[RegistryError]:
        """Apply a checked ITI-57 request all-or-nothing; the registry errors that refused it, else []."""
        try:
            self._update(request)
        except _Refused as refused:
            return refused.errors
        return []

    def _update(self, request: UpdateRequest) -> None:
        with self._transaction() as db:
            errors = [e for e in self._patient_errors(db, request.patient) if e.code == "XDSUnknownPatientId"]
            if db.execute("SELECT 1 FROM updates WHERE uid = ?", (request.uid,)).fetchone():
                errors.append(RegistryError("XDSDuplicateUniqueIdInRegistry", "uniqueId du lot de soumission déjà reçu",
                                            request.uid, check="duplicate.submission_set"))
            targets = []
            for change in request.changes:
                target = _entry(db, change.target)
                if target is None:
                    errors.append(RegistryError("UnresolvedReferenceException", "entrée inconnue", change.target,
                                                check="update.unknown"))
                elif target["patient"] != request.patient:
                    errors.append(RegistryError("XDSPatientIDReconciliationError", "entrée d'un autre patient que le lot",
                                                change.target, check="update.patient"))
                elif request.structure is None or target["finess"] != request.structure:
                    errors.append(RegistryError("XDSMetadataUpdateError",
                                                "seule la structure auteur du document peut le supprimer ou l'archiver",
                                                change.target, check="update.author_structure"))
                elif target["status"] != change.original or target["status"] == DELETED:
                    errors.append(RegistryError(
                        "XDSMetadataUpdateError",
                        f"statut actuel {target['status'].rsplit(':', 1)[-1]}, OriginalStatus "
                        f"{change.original.rsplit(':', 1)[-1]}", change.target, check="update.status"))
                else:
                    targets.append((change, target))
            if errors:
                raise _Refused(errors)
            now = _now()
            db.execute("INSERT INTO updates (uid, entry_uuid, patient, structure, received_at) VALUES (?, ?, ?, ?, ?)",
                       (request.uid, request.entry_uuid, request.patient, request.structure, now))
            for change, target in targets:
                self._set_status(db, target, change.new, "status", request.uid, now)

    def entries(self, *, patient: str | None, unique_ids=(), entry_uuids=()) -> list[dict]:
        """The document entries (first delivery of each, no signature) with these uniqueIds or entryUUIDs, of
        `patient` when given (ITI-18 GetDocuments)."""
        column, wanted = ("uid", list(unique_ids)) if unique_ids else ("entry_uuid", list(entry_uuids))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._read() as db:
            rows = db.execute(
                f"SELECT * FROM documents WHERE {column} IN ({marks}) AND duplicate = 0 AND is_signature = 0"
                " ORDER BY id", wanted).fetchall()
        return [_document(r) for r in rows if patient is None or r["patient"] == patient]

    def status_of(self, entry_uuid: str) -> str | None:
        """The availability status of an entry (its first delivery), None if unknown."""
        with self._read() as db:
            row = _entry(db, entry_uuid)
        return row["status"] if row else None

    def reject(self, errors: list[RegistryError], *, request: str | None, submission_uid: str | None) -> None:
        with self._transaction() as db:
            now = _now()
            db.executemany(
                "INSERT INTO rejections (at, request, code, check_name, context, location, submission_uid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(now, request, e.code, e.check, e.context, e.location, submission_uid) for e in errors],
            )

    def record_fault(self, kind: str, service: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO injected_faults (at, kind, service) VALUES (?, ?, ?)", (_now(), kind, service))

    def submission(self, uid: str) -> dict | None:
        """A stored submission set with its documents (ITI-18 GetSubmissionSetAndContents)."""
        with self._read() as db:
            row = db.execute("SELECT * FROM submissions WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                return None
            docs = db.execute(
                "SELECT * FROM documents WHERE submission_uid = ? ORDER BY id", (uid,)
            ).fetchall()
        return dict(row) | {"documents": [_document(d) for d in docs]}

    def documents_of(self, patient: str) -> list[dict]:
        """The documents stored for a patient, first delivery of each uniqueId only (ITI-18 FindDocuments)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM documents WHERE patient = ? AND duplicate = 0 AND is_signature = 0 ORDER BY id",
                (patient,),
            ).fetchall()
        return [_document(r) for r in rows]

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Read-only access for the report."""
        with self._read() as db:
            return db.execute(sql, params).fetchall()


def _entry(db: sqlite3.Connection, entry_uuid: str) -> sqlite3.Row | None:
    """The first delivery of a document entry (not a signature) by its entryUUID."""
    return db.execute("SELECT * FROM documents WHERE entry_uuid = ? AND is_signature = 0 AND duplicate = 0"
                      " ORDER BY id LIMIT 1", (entry_uuid,)).fetchone()


def _document(row: sqlite3.Row) -> dict:
    doc = dict(row)
    doc.pop("content", None)
    return doc
