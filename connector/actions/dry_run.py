"""`run --dry-run`: every candidate with its decision, nothing recorded, nothing sent."""

from __future__ import annotations

import itertools
import json
from typing import Iterator

from connector.actions.context import open_settings_ledger, open_store
from connector.config import Settings
from connector.payload import activity, xds
from connector.ledger.repo import LedgerMissing
from connector.scan import Decision, scan


def decisions(settings: Settings) -> Iterator[Decision]:
    store = open_store(settings)
    try:
        ledger = open_settings_ledger(settings)
    except LedgerMissing:  # before the first run: the rules alone decide (nothing was fed, held or failed yet)
        ledger = None
    for group in scan(store, ledger, settings, load_content=False):
        yield from group


def as_dict(d: Decision, settings: Settings) -> dict:
    """One row; an eligible document's `content_type_code` (its activity, JDV_J59) with its site says which
    submission set of its patient it joins."""
    return {
        "document_id": d.document_id,
        "version": d.version,
        "patient_id": d.patient_id,
        "finess_geo": d.document.finess_geo if d.document else None,
        "type_code": d.document.type_code if d.document else None,
        "content_type_code": _content_type(d, settings),
        "decision": "eligible" if d.eligible else "skipped",
        "reason": d.reason,
        "detail": d.detail,
    }


def _content_type(d: Decision, settings: Settings) -> str | None:
    if not d.eligible:
        return None
    code = xds.content_type_code(d.document, settings.submission)  # the rules checked the activity
    return code.code if code.scheme == activity.R209 else f"{code.code}^{code.scheme}"


def json_chunks(rows: Iterator[dict], rows_per_chunk: int = 200) -> Iterator[str]:
    """The text of `json.dumps(list(rows), ensure_ascii=False, indent=1)`, a few rows at a time (never the whole list)."""
    rows, opening = iter(rows), "[\n"
    while chunk := list(itertools.islice(rows, rows_per_chunk)):
        # A list's items come indented one level: keep them, without that list's own "[\n" and "\n]".
        yield opening + json.dumps(chunk, ensure_ascii=False, indent=1)[2:-2]
        opening = ",\n"
    yield "[]" if opening == "[\n" else "\n]"
