"""Probe a store document's content without reading it whole: its size and its first and last bytes are all
the eligibility rules look at (`rules.check_content_probe`). A `run --dry-run` over 100,000 documents would
otherwise read ~30 GB."""

from __future__ import annotations

import os

from connector.rules import PROBE_HEAD, PROBE_TAIL, PROBE_XREF, pdf_xref_offset, probe_of
from connector.store import Document, Store

def content_probe(store: Store, document: Document, limit: int | None = None) -> tuple[int, bytes, bytes, bytes]:
    """(size, first PROBE_HEAD bytes, last PROBE_TAIL bytes, PROBE_XREF bytes at the PDF's startxref offset);
    raises ContentRefused or OSError like `Store.content` (a file over `limit` bytes is refused, not read)."""
    if not document.content_path:
        content = store.content(document, limit)  # in the store's database: no cheaper read through the contract
        return probe_of(content)
    fd, size = store.open_content(document, limit)
    with os.fdopen(fd, "rb") as f:
        head = f.read(PROBE_HEAD)
        if size <= PROBE_HEAD + PROBE_TAIL:
            whole = head + f.read(PROBE_TAIL + 1)
            return probe_of(whole)
        f.seek(size - PROBE_TAIL)
        tail = f.read(PROBE_TAIL)
        offset = pdf_xref_offset(tail, size)
        at_xref = b""
        if offset is not None:
            f.seek(offset)
            at_xref = f.read(PROBE_XREF)
        return size, head, tail, at_xref
