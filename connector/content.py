"""Probe a store document's content without reading it whole: its size and its first and last bytes are all
the eligibility rules look at (`rules.check_content_probe`). A `run --dry-run` over 100,000 documents would
otherwise read ~30 GB."""

from __future__ import annotations

import os

from connector.rules import PROBE_HEAD, PROBE_TAIL
from connector.store import Document, Store


def content_probe(store: Store, document: Document) -> tuple[int, bytes, bytes]:
    """(size, first PROBE_HEAD bytes, last PROBE_TAIL bytes); raises OSError like `Store.content`."""
    if not document.content_path:
        content = store.content(document)  # in the store's database: no cheaper read through the contract
        return len(content), content[:PROBE_HEAD], content[-PROBE_TAIL:]
    with open(store.content_file(document), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(PROBE_HEAD)
        if size <= PROBE_HEAD + PROBE_TAIL:
            whole = head + f.read()
            return len(whole), head, whole[-PROBE_TAIL:]
        f.seek(size - PROBE_TAIL)
        return size, head, f.read(PROBE_TAIL)
