"""A lost or moved ledger: refuse to feed over it, and rebuild it from the store's `dmp_feed_status`.

The ledger is what keeps a document from being sent twice. A run that finds a ledger that has fed nothing
while the store's `dmp_feed_status` records documents FED is looking at the wrong ledger (state_dir moved,
ledger.url changed, file lost): it stops rather than send them again. `db rebuild` then records, in a ledger
that has sent nothing, every document `dmp_feed_status` marks FED, with the DMP unique id and time recorded
there; the other documents are evaluated by the next run as new ones.
"""

from __future__ import annotations

import sqlalchemy as sa

from connector.errors import LedgerError
from connector.ledger.repo import Ledger, utcnow
from connector.ledger.schema import APPROVED, DELETED, FED, WITHDRAWN, documents, submissions
from connector.store import Store, dmp_document, dmp_feed_status

BATCH = 1000
REBUILT = "rebuilt from dmp_feed_status"


def store_records_fed(store: Store) -> bool:
    """Whether the store's write-back table records at least one document FED (whatever store.write_back says)."""
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(dmp_feed_status.name):
            return False
        return conn.execute(sa.select(dmp_feed_status.c.document_id)
                            .where(dmp_feed_status.c.status == FED).limit(1)).first() is not None


def ledger_has_fed(ledger: Ledger) -> bool:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(documents.c.document_id).where(documents.c.state == FED).limit(1)).first() is not None


def _where(ledger: Ledger) -> str:
    url = ledger.engine.url
    return url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


def refuse_a_lost_ledger(ledger: Ledger, store: Store) -> None:
    if not ledger_has_fed(ledger) and store_records_fed(store):
        raise LedgerError(
            f"the ledger ({_where(ledger)}) has fed nothing but the store's dmp_feed_status records documents FED: "
            "the ledger was lost or moved (state_dir or ledger.url changed?) and running would send them again; "
            "point ledger.url at the ledger, or rebuild it with `dmp-connector db rebuild`")


def rebuild(ledger: Ledger, store: Store) -> int:
    """Record FED, in a ledger that has sent nothing, every document `dmp_feed_status` records FED; returns
    how many. One transaction: an interrupted rebuild leaves the ledger as it was."""
    with ledger.engine.connect() as conn:
        sent = conn.execute(sa.select(submissions.c.id).limit(1)).first() is not None
    if sent or ledger_has_fed(ledger):
        raise LedgerError(f"the ledger ({_where(ledger)}) already records submissions: `db rebuild` only fills a "
                          "ledger that has sent nothing (a new one in place of a lost one)")
    f, d = dmp_feed_status, dmp_document
    query = (sa.select(f.c.document_id, f.c.version, f.c.status, f.c.dmp_unique_id, f.c.fed_at,
                       d.c.patient_id, d.c.finess_geo, d.c.type_code)
             .select_from(f.outerjoin(d, (d.c.document_id == f.c.document_id) & (d.c.version == f.c.version)))
             .where(f.c.status.in_([FED, WITHDRAWN])).order_by(f.c.document_id, f.c.version))
    now, count = utcnow(), 0
    with store.engine.connect() as source, ledger.engine.begin() as target:
        rows = source.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        for batch in rows.partitions(BATCH):
            keys = [(r.document_id, r.version) for r in batch]
            # what a run before the rebuild decided about them (PENDING, SKIPPED…) gives way to the fact
            target.execute(sa.delete(documents).where(sa.tuple_(documents.c.document_id, documents.c.version).in_(keys)))
            # a withdrawn document stays withdrawn (never fed again); the CDA versionNumber of a version's entry is
            # the last arc of its uniqueId (a later correction's must be above it)
            target.execute(sa.insert(documents), [dict(
                document_id=r.document_id, version=r.version, patient_id=r.patient_id or "", finess_geo=r.finess_geo,
                type_code=r.type_code, state=FED, detail=REBUILT, unique_id=r.dmp_unique_id,
                dmp_status=DELETED if r.status == WITHDRAWN else APPROVED, cda_version=_entry_version(r.dmp_unique_id),
                reason=WITHDRAWN if r.status == WITHDRAWN else None,
                fed_at=r.fed_at or now, first_seen_at=now, updated_at=now) for r in batch])
            count += len(batch)
    return count


def _entry_version(unique_id: str | None) -> int | None:
    """The CDA versionNumber of a document uniqueId `<oid_root>.1.<document arc>.<version>` (None: not ours)."""
    last = (unique_id or "").rsplit(".", 1)[-1]
    return int(last) if last.isdigit() and len(last) <= 10 else None
