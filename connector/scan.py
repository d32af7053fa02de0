"""Scan the store and decide, for every document, whether it may be fed now and why not.

Candidates stream from the store grouped by patient (one patient's documents at a time, never the whole
store in memory); the ledger says what we already did with each; the rules say what the référentiel allows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

from connector import pdfa, rules
from connector.config import Settings
from connector.content import content_probe
from connector.ledger.repo import DocState, Ledger, utcnow
from connector.ledger.schema import DEFERRED, FAILED, FED, SUBMITTING
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
    warning: str | None = None  # eligible, but something to tell the operator (PDF/A triage): no content in it

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
        fed_versions: dict[str, list[int]] = {}
        for (document_id, version), state in states.items():
            if state.state == FED:
                fed_versions.setdefault(document_id, []).append(version)
        for group in batch:
            latest: dict[str, int] = {}
            for c in group:
                if isinstance(c, Candidate):
                    latest[c.document.document_id] = max(c.document.version, latest.get(c.document.document_id, 0))
            yield [_decide(c, states, fed_versions, latest, store, settings, now, load_content) for c in group]


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


def _decide(item, states: dict[tuple[str, int], DocState], fed_versions: dict[str, list[int]], latest: dict[str, int],
            store: Store, settings: Settings, now, load_content) -> Decision:
    if isinstance(item, RowProblem):
        return Decision(item.document_id, item.version, item.patient_id, ROW_INVALID, item.message)
    doc, patient = item.document, item.patient
    base = dict(document_id=doc.document_id, version=doc.version, patient_id=doc.patient_id, document=doc, patient=patient)
    state = states.get(doc.key)
    if state is not None:
        base["ledger_state"] = state.state
        if state.state == FED:
            return Decision(**base, reason=rules.Reason.ALREADY_FED, detail="fed earlier")
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
    if doc.version < latest[doc.document_id]:
        return Decision(**base, reason=SUPERSEDED, detail=f"version {latest[doc.document_id]} is in the store")
    earlier_fed = any(v < doc.version for v in fed_versions.get(doc.document_id, ()))
    skip = rules.check_record(doc, patient, settings, already_fed=False, earlier_version_fed=earlier_fed)
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
    warning = None
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
            warning = f"{pdfa.CONTENT_NOT_PDFA}: " + "; ".join(found)
    return Decision(**base, reason=None, content=data if load_content else None, warning=warning)


def _pdfa_due(doc: Document, settings: Settings, load_content: bool) -> bool:
    """Whether the PDF/A triage looks at this document: a PDF, unless `validation.pdfa` is off. Without its content
    (a dry run reads only the ends of each file), only when its verdict would skip the document."""
    mode = settings.validation.pdfa
    is_pdf = (doc.mime_type or "").split(";")[0].strip().lower() == "application/pdf"
    return is_pdf and mode != "off" and (load_content or mode == "reject")
