"""`run --dry-run`: every candidate with its decision, nothing recorded, nothing sent."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Iterator

from connector import prepare
from connector.actions.context import open_settings_ledger, open_store
from connector.config import Settings
from connector.actions import corrections
from connector.ledger.schema import REPLACE, WITHDRAW
from connector.payload import activity, ids, lifecycle, xds
from connector.payload.errors import PayloadError
from connector.ledger.repo import LedgerMissing
from connector.scan import Decision, scan
from connector.store import ContentRefused


def decisions(settings: Settings) -> Iterator[Decision]:
    store = open_store(settings)
    try:
        ledger = open_settings_ledger(settings)
    except LedgerMissing:  # before the first run: the rules alone decide (nothing was fed, held or failed yet)
        ledger = None
    for group in scan(store, ledger, settings, load_content=False):
        for d in group:
            yield _passthrough_checked(settings, store, d)


def _passthrough_checked(settings: Settings, store, d: Decision) -> Decision:
    """An eligible pass-through CDA (produced elsewhere) goes through the checks the run makes before sending it
    (`prepare.document_cda`: its patient, site and ids, the ANS XSD and schematron): the run fails it FAILED
    with their reason, so the dry run says it `fails` with the same. Our own CDAs are built from checked rows:
    the dry run does not build them (it reads only the ends of each PDF)."""
    if not d.eligible or d.action == WITHDRAW or d.document.mime_type != prepare.CDA_MIME:
        return d
    site = settings.structure.site(d.document.finess_geo)
    try:
        content = store.content(d.document, settings.rules.max_document_bytes)
        prepare.document_cda(settings, d.document, d.patient, site, content, revision=_revision(settings, d))
    except PayloadError as exc:
        return WouldFail(**{**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)},
                            "reason": exc.reason, "detail": str(exc)})
    except (ContentRefused, OSError) as exc:  # changed since its probe: the run sees it again
        return dataclasses.replace(d, reason=getattr(exc, "reason", "CONTENT_MISSING"),
                                   detail=getattr(exc, "detail", None) or "content unreadable")
    return d


def _revision(settings: Settings, d: Decision) -> prepare.Revision | None:
    """A replacement as the run would build it, the replaced entry as the ledger knows it (the run asks the
    registry for its entryUUID first; the CDA's checks need only its uniqueId and version)."""
    if d.action != REPLACE or d.replaces is None:
        return None
    old, root = d.replaces, settings.structure.oid_root
    target = old.dmp_entry_uuid or ids.entry_uuid(root, old.document_id, corrections.entry_version(old))
    return prepare.Revision(max(d.version, corrections.entry_version(old) + 1),
                            lifecycle.Replaces(target, corrections.entry_unique_id(root, old)), old.version)


@dataclasses.dataclass(frozen=True)
class WouldFail(Decision):
    """An eligible document whose CDA the run would refuse before sending it: recorded FAILED with `reason`."""


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
        "decision": "eligible" if d.eligible else "fails" if isinstance(d, WouldFail) else "skipped",
        # an eligible correction of what the DMP holds: REPLACE (of the version `replaces`) or WITHDRAW
        "correction": getattr(d, "action", None) if d.eligible else None,
        "replaces": d.replaces.version if d.eligible and getattr(d, "replaces", None) is not None else None,
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
