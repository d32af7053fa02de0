"""`write-back`: the store's `dmp_feed_status` rewritten from the ledger, the source of truth.

A write-back that fails during a run (store down, a user without the right to write) is remembered in the
ledger (`write_back_pending`); every run starts by writing those rows again, until it succeeds. `dmp-connector
write-back` does it at once, and `--all` rewrites the row of every FED and FAILED document (a table emptied or
restored by the DPI).
"""

from __future__ import annotations

import logging

from connector.deliver import short_error
from connector.ledger.repo import Ledger
from connector.store import Store

log = logging.getLogger("connector.write_back")


def retry_write_backs(ledger: Ledger, store: Store, *, everything: bool = False, batch: int = 500) -> tuple[int, str | None]:
    """Write the pending rows (or, `everything`, every FED and FAILED document's row) from the ledger.
    Returns (rows written, the error that stopped it)."""
    if not store.write_back_enabled:
        return 0, None
    written, after = 0, None
    while rows := ledger.write_back_rows(pending_only=not everything, limit=batch, after=after):
        keys = [(r["document_id"], r["version"]) for r in rows]
        try:
            store.write_back(rows)
        except Exception as exc:
            error = short_error(exc)
            ledger.write_back_failed(keys, error)
            log.warning("dmp_feed_status: %d row(s) not written (%s); retried by the next run",
                        ledger.write_back_pending_count()[0], error)
            return written, error
        ledger.write_back_done(keys)
        written += len(rows)
        after = keys[-1] if everything else None  # pending rows leave the table as they are written
    if written:
        log.info("dmp_feed_status: %d row(s) written from the ledger", written)
    return written, None
