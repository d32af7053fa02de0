"""The ledger's tables. Alembic migrations (connector/ledger/migrations) create and evolve them;
this module is the single description the code queries against."""

import sqlalchemy as sa

metadata = sa.MetaData()

# Document states (DESIGN.md §4).
PENDING, SUBMITTING, FED, DEFERRED, FAILED, SKIPPED = "PENDING", "SUBMITTING", "FED", "DEFERRED", "FAILED", "SKIPPED"
STATES = (PENDING, SUBMITTING, FED, DEFERRED, FAILED, SKIPPED)

# A document version's availability status in the DMP (documents.dmp_status; None: not in the DMP).
APPROVED, DEPRECATED, DELETED = "Approved", "Deprecated", "Deleted"
# What a journaled entry does (submission_documents.action): a first feeding, a replacement (RPLC: a new
# version, a masking change or an unmask), a withdrawal (ITI-57, Deleted).
FEED, REPLACE, WITHDRAW = "FEED", "REPLACE", "WITHDRAW"
# The transaction of a journaled submission (submissions.kind).
ITI41, ITI57 = "ITI-41", "ITI-57"
WITHDRAWN = "WITHDRAWN"  # the reason of a FED document whose entry was withdrawn (Deleted)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("mode", sa.String(16), nullable=False),  # run, dry-run, replay
    sa.Column("status", sa.String(16), nullable=False),  # running, done, failed
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("counts", sa.JSON),
    sa.Column("message", sa.String(1000)),
)

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("document_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("patient_id", sa.String(64), nullable=False),
    sa.Column("finess_geo", sa.String(9)),
    sa.Column("type_code", sa.String(32)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),  # a skip reason, or the DMP's error code (migration 0006)
    sa.Column("detail", sa.String(1000)),
    sa.Column("held", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("first_seen_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("first_attempt_at", sa.DateTime),
    sa.Column("next_attempt_at", sa.DateTime),
    sa.Column("fed_at", sa.DateTime),
    sa.Column("unique_id", sa.String(64)),
    sa.Column("submission_id", sa.Integer, sa.ForeignKey("submissions.id")),
    sa.Column("last_run_id", sa.Integer),
    # Migration 0007: the version's DMP entry (the registry's entryUUID once looked up, else ours), its status there,
    # and the masking codes and CDA versionNumber it was fed with (a change of them is sent as a replacement).
    sa.Column("dmp_entry_uuid", sa.String(64)),
    sa.Column("dmp_status", sa.String(16)),
    sa.Column("masking", sa.String(100)),
    sa.Column("cda_version", sa.Integer),
    sa.Index("ix_documents_state", "state", "next_attempt_at"),
    sa.Index("ix_documents_patient", "patient_id"),
    sa.Index("ix_documents_fed_at", "fed_at"),
    sa.Index("ix_documents_submission", "submission_id"),
    sa.Index("ix_documents_dmp_status", "dmp_status"),  # the report's DMP entries per status (migration 0008)  # the run's updates per submission set (migration 0004)
    # The status report (migrations 0002, 0003): covering indexes, so every query reads an index, not the table.
    sa.Index("ix_documents_state_updated", "state", "updated_at", "first_attempt_at"),
)
# All of the report's figures in one ordered pass (GROUP BY in index order, no sort); the plain columns last let
# SQLite (< 3.41) treat the expression index as covering.
sa.Index("ix_documents_cells", sa.func.date(documents.c.first_seen_at), documents.c.state, documents.c.reason,
         documents.c.finess_geo, documents.c.type_code, sa.func.date(documents.c.fed_at), documents.c.first_seen_at,
         documents.c.fed_at)
sa.Index("ix_documents_fed_day", sa.func.date(documents.c.fed_at), documents.c.fed_at)  # feeds since a date

# A submission set: the ids are chosen and committed BEFORE the first byte is sent, and reused on resend.
submissions = sa.Table(
    "submissions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("submission_set_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("entry_uuid", sa.String(64), nullable=False),
    sa.Column("patient_id", sa.String(64), nullable=False),
    sa.Column("finess_geo", sa.String(9), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # SUBMITTING, FED, DEFERRED, FAILED
    sa.Column("submission_time", sa.DateTime, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("outcome", sa.String(32)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.String(2000)),
    sa.Column("run_id", sa.Integer),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until", sa.DateTime),
    # Migration 0007: ITI-41 (feed, replace) or ITI-57 (withdraw), and a withdrawal's reason (EXI 09/10).
    sa.Column("kind", sa.String(16), nullable=False, server_default="ITI-41"),
    sa.Column("note", sa.String(1000)),
    sa.Index("ix_submissions_state", "state"),
)

submission_documents = sa.Table(
    "submission_documents",
    metadata,
    sa.Column("submission_id", sa.Integer, sa.ForeignKey("submissions.id"), primary_key=True),
    sa.Column("document_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("unique_id", sa.String(64), nullable=False),
    sa.Column("entry_uuid", sa.String(64), nullable=False),
    # Migration 0007: FEED, REPLACE or WITHDRAW; the CDA versionNumber and masking codes sent; for a replacement,
    # the store version, uniqueId and registry entryUUID of the entry replaced (a resend rebuilds the same request).
    sa.Column("action", sa.String(16), nullable=False, server_default=FEED),
    sa.Column("cda_version", sa.Integer),
    sa.Column("masking", sa.String(100)),
    sa.Column("replaces_version", sa.Integer),
    sa.Column("replaces_unique_id", sa.String(64)),
    sa.Column("replaces_entry_uuid", sa.String(64)),
)

# EXI 16: every DMP transaction, append-only.
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("run_id", sa.Integer),
    sa.Column("action", sa.String(32), nullable=False),  # ITI-41, ITI-18
    sa.Column("finess_geo", sa.String(9)),
    sa.Column("rpps", sa.String(11)),
    sa.Column("submission_set_uid", sa.String(64)),
    sa.Column("document_ids", sa.String(2000)),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("message", sa.String(2000)),
    sa.Index("ix_audit_at", "at"),
)

# An operator's hold (`dmp-connector hold`), by document id and optional version (NULL: every version), whether or
# not a run has seen the document yet (migration 0005).
holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("document_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("held_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("document_id", "version", name="uq_holds_document_version"),
)

# Documents whose `dmp_feed_status` row could not be written: every run retries them until it succeeds.
write_back_pending = sa.Table(
    "write_back_pending",
    metadata,
    sa.Column("document_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("since", sa.DateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("last_error", sa.String(300)),
)

# The expiry of the certificates the last run loaded (read by `status --check` without loading them).
certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("purpose", sa.String(16), primary_key=True),
    sa.Column("not_after", sa.DateTime, nullable=False),
    sa.Column("checked_at", sa.DateTime, nullable=False),
)
