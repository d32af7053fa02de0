"""Scan the store and decide, for every document, whether it may be fed now and why not.

Candidates stream from the store grouped by patient (one patient's documents at a time, never the whole
store in memory); the ledger says what we already did with each; the rules say what the référentiel allows.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Iterator

from connector import pdfa, rules
from connector.payload import header
from connector.config import Settings
from connector.content import content_probe
from connector.ledger.repo import DocState, Ledger, utcnow
from connector.ledger.schema import (APPROVED, DELETED, DEFERRED, DEPRECATED, FAILED, FED, PENDING, REPLACE, SKIPPED,
                                     SUBMITTING, WITHDRAW)
from connector.store import ROW_INVALID, Candidate, ContentRefused, Document, Patient, RowProblem, Store

# Reasons that come from the ledger rather than from the rules.
HELD = "HELD"
IN_PROGRESS = "IN_PROGRESS"  # part of a submission not settled yet (settled at the start of a run)
NOT_DUE = "DEFERRED_NOT_DUE"
SUPERSEDED = "SUPERSEDED"  # a later version of the same document is in the store: only the latest is fed


@dataclass(frozen=True)
class Decision:
    document_id: str
    version: int | None
    patient_id: str | None
    reason: str | None  # None: eligible
    detail: str | None = None
    document: Document | None = None
    patient: Patient | None = None
    content: bytes | None = None  # loaded for eligible documents only, when asked for
    ledger_state: str | None = None
    # eligible, but something to tell the operator ("CODE: what", PDF/A triage, a value left out): no content in it
    warnings: tuple[str, ...] = ()
    # A correction of what the DMP holds (issue 17): REPLACE (RPLC of `replaces`: a new version, or this version
    # with new masking codes) or WITHDRAW (`replaces` is the version withdrawn); None: a first feeding.
    action: str | None = None
    replaces: DocState | None = None

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def record_skip(self) -> bool:
        """Whether the ledger should record this skip (ledger-driven reasons are already recorded there)."""
        return self.reason is not None and self.ledger_state not in (FED, FAILED, SUBMITTING, DEFERRED)


STATES_BATCH = 500  # candidates whose ledger states are read in one query (one query per patient was the bottleneck)


def scan(store: Store, ledger: Ledger | None, settings: Settings, *, load_content: bool = True) -> Iterator[list[Decision]]:
    """Yield, patient by patient, the decisions for every store document (by the rules alone without a ledger).

    Ledger states are read for several patients at once (about STATES_BATCH documents); each patient's decisions
    (and content) are still made when its group is asked for. States are a snapshot either way: the journal
    (`Ledger.journal_submission`) is what settles a race with another instance."""
    now = utcnow()
    groups = (list(group) for _, group in itertools.groupby(store.candidates(), key=_patient_of))
    for batch in _batches(groups, STATES_BATCH):
        keys = [c.document.key for group in batch for c in group if isinstance(c, Candidate)]
        states = ledger.states(keys) if ledger else {}
        dmp = _in_dmp(states)
        for group in batch:
            latest: dict[str, Document] = {}
            for c in group:
                if isinstance(c, Candidate):
                    known = latest.get(c.document.document_id)
                    if known is None or c.document.version > known.version:
                        latest[c.document.document_id] = c.document
            yield [_decide(c, states, dmp, latest, store, settings, now, load_content) for c in group]


@dataclass(frozen=True)
class _InDmp:
    """What the DMP holds of one document id, as the ledger says."""

    approved: DocState | None  # the version Approved there (the highest, should there be two)
    first_fed_at: object  # when a version of it was first fed (naive UTC), the start of EXI 08's month


def _in_dmp(states: dict[tuple[str, int], DocState]) -> dict[str, _InDmp]:
    found: dict[str, _InDmp] = {}
    for (document_id, version), state in sorted(states.items()):
        known = found.get(document_id, _InDmp(None, None))
        # FED without a status: a DocState of a ledger from before migration 0007 (which sets Approved on FED rows)
        here = state.dmp_status == APPROVED or (state.state == FED and state.dmp_status is None)
        approved = state if here else known.approved
        first = min(filter(None, (known.first_fed_at, state.fed_at)), default=None)
        found[document_id] = _InDmp(approved, first)
    return found


def _batches(groups: Iterator[list], size: int) -> Iterator[list[list]]:
    """Whole groups, gathered until they hold at least `size` items."""
    batch, count = [], 0
    for group in groups:
        batch.append(group)
        count += len(group)
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def _patient_of(item: Candidate | RowProblem) -> str | None:
    return item.document.patient_id if isinstance(item, Candidate) else item.patient_id


def _decide(item, states: dict[tuple[str, int], DocState], dmp: dict[str, _InDmp], latest: dict[str, Document],
            store: Store, settings: Settings, now, load_content) -> Decision:
    if isinstance(item, RowProblem):
        return Decision(item.document_id, item.version, item.patient_id, ROW_INVALID, item.message)
    doc, patient = item.document, item.patient
    base = dict(document_id=doc.document_id, version=doc.version, patient_id=doc.patient_id, document=doc, patient=patient)
    state = states.get(doc.key)
    in_dmp = dmp.get(doc.document_id, _InDmp(None, None))
    if state is not None:
        base["ledger_state"] = state.state
        if state.state == FED or (state.dmp_status is not None and state.state in (PENDING, SKIPPED)):
            return _in_the_dmp(base, doc, state, latest[doc.document_id], in_dmp, store, settings, now, load_content)
        if state.held:
            return Decision(**base, reason=HELD, detail="held by an operator; `dmp-connector release` to resume")
        if state.state == FAILED:
            return Decision(**base, reason=state.reason or FAILED, detail="failed earlier; `dmp-connector replay` to retry")
        if state.state == SUBMITTING:
            return Decision(**base, reason=IN_PROGRESS, detail="submission not settled yet")
        if state.state == DEFERRED:
            detail = f"next attempt at {state.next_attempt_at:%Y-%m-%d %H:%M} UTC" if state.next_attempt_at else None
            return Decision(**base, reason=NOT_DUE if state.next_attempt_at and state.next_attempt_at > now else IN_PROGRESS,
                            detail=detail)
    if doc.version < latest[doc.document_id].version:
        return Decision(**base, reason=SUPERSEDED, detail=f"version {latest[doc.document_id].version} is in the store")
    replaces = in_dmp.approved if in_dmp.approved is not None and in_dmp.approved.version < doc.version else None
    sent = rules.as_sent(doc, in_dmp.first_fed_at, settings, now)
    if replaces is not None:
        base.update(action=REPLACE, replaces=replaces)
    return _feed(base, sent, patient, store, settings, load_content)


def _in_the_dmp(base: dict, doc: Document, state: DocState, latest: Document, in_dmp: _InDmp, store: Store,
                settings: Settings, now, load_content) -> Decision:
    """A version the DMP holds (or held): a withdrawal if the store cancelled the document, a replacement if its
    masking changed or its unmask is due, else nothing to do."""
    Reason = rules.Reason
    if state.dmp_status == DELETED:
        return Decision(**base, reason=Reason.WITHDRAWN, detail="withdrawn from the DMP (Deleted)")
    if state.dmp_status == DEPRECATED:
        return Decision(**base, reason=Reason.REPLACED, detail="replaced in the DMP by a later entry (Deprecated)")
    if state.dmp_status != APPROVED:
        return Decision(**base, reason=Reason.ALREADY_FED, detail="fed earlier")
    if state.held:
        return Decision(**base, reason=HELD, detail="held by an operator; `dmp-connector release` to resume")
    if latest.status == rules.CANCELLED:
        if not settings.rules.withdraw_cancelled:
            return Decision(**base, reason=Reason.ALREADY_FED,
                            detail="cancelled in the store, left in the DMP (rules.withdraw_cancelled = false)")
        detail = f"version {latest.version} is CANCELLED in the store: withdrawn from the DMP"
        return Decision(**base, reason=None, detail=detail, action=WITHDRAW, replaces=state)
    if doc.version < latest.version:
        if latest.status == rules.NOT_FOR_DMP:  # never sent, so it replaces nothing: this version stays
            return Decision(**base, reason=Reason.ALREADY_FED,
                            detail=f"fed earlier; version {latest.version} is not destined to the DMP, this one stays")
        return Decision(**base, reason=Reason.ALREADY_FED, detail=f"fed earlier; version {latest.version} replaces it")
    sent = rules.as_sent(doc, in_dmp.first_fed_at, settings, now)
    fed_masking = state.masking if state.masking is not None else rules.masking(doc)  # fed before migration 0007
    if rules.masking(sent) == fed_masking:
        return Decision(**base, reason=Reason.ALREADY_FED, detail="fed earlier")
    unmask = rules.masking(doc) == fed_masking  # the store's flags as fed: only the unmask changed them
    base.update(action=REPLACE, replaces=state,
                detail="unmask due (EXI 08)" if unmask else "masking changed in the store")
    return _feed(base, sent, base["patient"], store, settings, load_content)


def _feed(base: dict, doc: Document, patient: Patient | None, store: Store, settings: Settings,
          load_content) -> Decision:
    """The rules and the content checks of a document to send (`doc`: as it is to be in the DMP)."""
    base = {**base, "document": doc}
    note = base.pop("detail", None)  # a replacement's note, kept when it is sent
    skip = rules.check_record(doc, patient, settings, already_fed=False)
    if skip is not None:
        return Decision(**base, reason=skip.reason, detail=skip.detail)
    data, error = None, None  # the content, or only its probe (size and bytes at both ends: all the rules look at)
    limit = settings.rules.max_document_bytes
    try:
        data = store.content(doc, limit) if load_content else content_probe(store, doc, limit)
    except ContentRefused as exc:
        return Decision(**base, reason=exc.reason, detail=exc.detail)
    except OSError as exc:
        error = exc.strerror or type(exc).__name__  # never the path: it may hold a name
    check = rules.check_content if load_content else rules.check_content_probe
    skip = check(doc, data, settings, error=error)
    if skip is not None:
        return Decision(**base, reason=skip.reason, detail=skip.detail)
    warnings = _left_out(doc)
    if _pdfa_due(doc, settings, load_content):
        try:
            found = pdfa.problems(data if load_content else store.content(doc, limit))
        except ContentRefused as exc:  # the file changed since its probe
            return Decision(**base, reason=exc.reason, detail=exc.detail)
        except OSError as exc:
            return Decision(**base, reason=rules.Reason.CONTENT_MISSING,
                            detail=f"content unreadable: {exc.strerror or type(exc).__name__}")
        if found and settings.validation.pdfa == "reject":
            return Decision(**base, reason=pdfa.CONTENT_NOT_PDFA,
                            detail="not PDF/A (validation.pdfa = reject): " + "; ".join(found))
        if found:
            warnings += (f"{pdfa.CONTENT_NOT_PDFA}: " + "; ".join(found),)
    return Decision(**base, reason=None, detail=note, content=data if load_content else None, warnings=warnings)


SPECIALTY_NOT_IN_J01 = "SPECIALTY_NOT_IN_J01"


def _left_out(doc: Document) -> tuple[str, ...]:
    """What the store gives that the DMP will not get: an author specialty outside JDV_J01 is carried by neither
    the CDA nor the metadata (the document is fed without it), which the operator must hear of."""
    if doc.author_specialty_code and header.author_specialty(doc) is None:
        return (f"{SPECIALTY_NOT_IN_J01}: author_specialty_code is not a JDV_J01 code: fed without the author's "
                "specialty",)
    return ()


def _pdfa_due(doc: Document, settings: Settings, load_content: bool) -> bool:
    """Whether the PDF/A triage looks at this document: a PDF, unless `validation.pdfa` is off. Without its content
    (a dry run reads only the ends of each file), only when its verdict would skip the document."""
    mode = settings.validation.pdfa
    is_pdf = (doc.mime_type or "").split(";")[0].strip().lower() == "application/pdf"
    return is_pdf and mode != "off" and (load_content or mode == "reject")
