"""Corrections of documents already in the DMP (issue 17), as a run (and `withdraw`) sends them.

- A **replacement** (a new version, a masking change, a due unmask) goes with the patient's other documents in
  an ITI-41 submission set. Before its CDA is built, the registry is asked (ITI-18 GetDocuments by the replaced
  version's uniqueId) for the entry it replaces, as the registry registered it: the Approved one. Without an
  answer the replacement waits for the next run; when the registry holds no Approved entry, the replacement
  still goes (to the entry found, else to the one recorded), and the registry's refusal is its outcome
  (FAILED with the DMP's code, for a human). Its CDA versionNumber (`Revision.cda_version`) is above every one
  sent for the document, and its uniqueId and entryUUID derive from it: each DMP entry has ids of its own.
- A **withdrawal** (ITI-57, Deleted) is journaled alone, with its reason (the store's CANCELLED, or the
  operator's `withdraw --reason`: EXI 09/10), and `Deliverer.withdraw` asks the registry before every send.
"""

from __future__ import annotations

import logging

from connector import prepare
from connector.ledger.repo import DocState, Ledger, SubmissionDoc, SubmissionRecord, utcnow
from connector.ledger.schema import FAILED, ITI57, REPLACE, WITHDRAW
from connector.payload import ids, lifecycle, xds
from connector.payload.errors import PayloadError
from connector.store import Candidate, Document, Patient, Store

log = logging.getLogger("connector.corrections")

LOOKUP_FAILED = "DMP_LOOKUP_FAILED"  # the registry could not say which entry a replacement replaces: next run


def entry_version(state: DocState) -> int:
    """The CDA versionNumber of a version's DMP entry (its ids derive from it)."""
    return state.cda_version if state.cda_version is not None else state.version


def entry_unique_id(oid_root: str, state: DocState) -> str:
    """The uniqueId of a version's DMP entry: as the ledger recorded it when fed (a pass-through CDA's own id),
    else the one derived from its CDA versionNumber (what the connector's own CDAs carry)."""
    return state.dmp_unique_id or ids.document_unique_id(oid_root, state.document_id, entry_version(state))


def revisions(settings, client, sign, decisions: list, ledger: Ledger | None = None,
              run_id: int | None = None) -> tuple[dict, list]:
    """{store key: Revision} of the replacements among `decisions`, and those the registry could not answer
    about (they wait for the next run). Each lookup goes to the audit trail of `ledger`."""
    found, waiting = {}, []
    oid_root = settings.structure.oid_root
    for d in decisions:
        if d.action != REPLACE:
            continue
        old = d.replaces
        unique_id = entry_unique_id(oid_root, old)
        site = settings.structure.site(d.document.finess_geo)
        try:
            vihf = prepare.lookup_vihf(settings, sign, site=site, patient=d.patient, documents=[d.document])
            entries = client.get_documents(unique_ids=[unique_id], patient_ins_cx=xds.ins_cx(d.patient), vihf=vihf)
        except PayloadError as exc:
            log.warning("document %s v%d: cannot ask the DMP for the entry it replaces: %s", d.document_id, d.version, exc)
            entries = None
        if ledger is not None:
            shown = "error" if entries is None else (",".join(e.availability or "?" for e in entries) or "not_found")
            ledger.audit(run_id=run_id, action="ITI-18", outcome=shown, finess_geo=d.document.finess_geo,
                         document_ids=[f"{d.document_id}:{d.version}"],
                         message=f"GetDocuments: the entry of v{old.version} it replaces")
        if entries is None:
            waiting.append(d)
            continue
        by_status = {e.availability: e for e in entries}
        entry = by_status.get("Approved") or (entries[0] if entries else None)
        if entry is None or entry.availability != "Approved":
            log.warning("document %s v%d: the DMP holds %s for the version it replaces; sent, the registry decides",
                        d.document_id, d.version, entry.availability if entry else "no entry")
        cda_version = max(d.version, entry_version(old) + 1)
        target = entry.entry_uuid if entry is not None else old.dmp_entry_uuid
        found[d.document.key] = prepare.Revision(cda_version, lifecycle.Replaces(target, unique_id), old.version)
    return found, waiting


def journal_doc(oid_root: str, document: Document, uid: str, revision: prepare.Revision | None,
                masking: str) -> SubmissionDoc:
    """A document's journal line in its ITI-41 submission set (a first feeding or a replacement)."""
    if revision is None:
        return SubmissionDoc(document.document_id, document.version, uid,
                             ids.entry_uuid(oid_root, document.document_id, document.version), masking=masking)
    return SubmissionDoc(document.document_id, document.version, uid,
                         ids.entry_uuid(oid_root, document.document_id, revision.cda_version), action=REPLACE,
                         cda_version=revision.cda_version, masking=masking, replaces_version=revision.replaces_version,
                         replaces_unique_id=revision.replaces.unique_id,
                         replaces_entry_uuid=revision.replaces.entry_uuid)


def replacement_note(batch) -> str | None:
    """What a submission set's replacements replace, for its audit lines (None: none)."""
    notes = [f"{d.document_id} v{d.version} replaces the entry of v{r.replaces_version} ({r.replaces.entry_uuid})"
             for d, _, _ in batch.documents if (r := batch.revisions.get(d.key)) is not None]
    return "; ".join(notes) or None


def revision_of(doc: SubmissionDoc) -> prepare.Revision | None:
    """The Revision a journaled replacement was built with (a resend rebuilds the same request)."""
    if doc.action != REPLACE:
        return None
    return prepare.Revision(doc.cda_version, lifecycle.Replaces(doc.replaces_entry_uuid, doc.replaces_unique_id),
                            doc.replaces_version)


def journal_withdrawal(settings, ledger: Ledger, *, state: DocState, patient_id: str, finess_geo: str, reason: str,
                       run_id: int | None, owner: str, lease) -> SubmissionRecord | None:
    """Write-ahead: the withdrawal of one document version (its DMP entry), with its reason. Its ids derive from
    the version and the new status, so journaling it again (a run after a crash, a second `withdraw`) finds the
    same one; None when another instance holds it or it is done."""
    root, status = settings.structure.oid_root, lifecycle.DELETED
    document_id, version = state.document_id, state.version
    return ledger.journal_submission(
        submission_set_uid=ids.update_submission_set_unique_id(root, document_id, version, status),
        entry_uuid=ids.update_submission_set_entry_uuid(root, document_id, version, status),
        patient_id=patient_id, finess_geo=finess_geo, submission_time=utcnow(),
        docs=[SubmissionDoc(document_id, version, entry_unique_id(root, state),
                            state.dmp_entry_uuid or ids.entry_uuid(root, document_id, entry_version(state)),
                            action=WITHDRAW)],
        run_id=run_id, owner=owner, lease=lease, kind=ITI57, note=reason)


def withdrawal_builder(settings, sign, record: SubmissionRecord, document: Document, patient: Patient):
    """`build(entryUUID)` of a journaled withdrawal's ITI-57 request (same ids and time at every build)."""
    site = settings.structure.site(record.finess_geo)

    def build(target_entry_uuid: str) -> prepare.PreparedUpdate:
        return prepare.withdrawal(settings, sign, site=site, patient=patient, document=document,
                                  target_entry_uuid=target_entry_uuid, submission_time=record.submission_time)
    return build


def resume_withdrawal(settings, ledger: Ledger, store: Store, sign, summary, record: SubmissionRecord,
                      submit_withdrawal) -> None:
    """A journaled withdrawal left open (crash, unknown outcome, deferred, replayed): rebuilt from the store and
    delivered (the registry is asked first). Whatever the store says of the document now (a CANCELLED one is what
    is withdrawn), only its patient and author are needed."""
    doc = record.documents[0]
    item = store.get(doc.document_id, doc.version)
    problem = None
    if not isinstance(item, Candidate) or item.patient is None:
        problem = "the document or its patient is no longer in the store"
    else:
        build = withdrawal_builder(settings, sign, record, item.document, item.patient)
        try:
            build(doc.entry_uuid)  # a request that cannot be built fails here, not in the sender
        except PayloadError as exc:
            problem = str(exc)
    if problem:
        ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code="RESEND_IMPOSSIBLE",
                                 error_message=f"document {doc.document_id} v{doc.version}: {problem}",
                                 reason="RESEND_IMPOSSIBLE")
        summary.add("failed", 1)
        return
    submit_withdrawal(record, build, item.patient)


# --- `dmp-connector withdraw` --------------------------------------------------------------------------


class NotInTheDmp(Exception):
    """The document (version) the operator asked to withdraw has no Approved entry in the DMP, as the ledger says."""


def request_withdrawal(settings, ledger: Ledger, document_id: str, version: int | None, reason: str) -> SubmissionRecord:
    """Journal the operator's withdrawal of `document_id` (its version Approved in the DMP, or `version`), with its
    reason (EXI 09/10: kept in the audit trail and on the document); the run that follows sends it. Raises
    NotInTheDmp naming what the ledger knows of it."""
    import sqlalchemy as sa

    from connector.ledger.schema import APPROVED, documents

    d = documents
    query = sa.select(d.c.version, d.c.dmp_status, d.c.patient_id, d.c.finess_geo).where(d.c.document_id == document_id)
    with ledger.engine.connect() as conn:
        rows = conn.execute(query.order_by(d.c.version)).all()
    if version is not None:
        rows = [r for r in rows if r.version == version]
    approved = [r for r in rows if r.dmp_status == APPROVED]
    if not approved:
        known = ", ".join(f"v{r.version} {r.dmp_status or 'not in the DMP'}" for r in rows) or "unknown to the ledger"
        raise NotInTheDmp(f"document {document_id}{f' v{version}' if version is not None else ''}: no entry Approved "
                          f"in the DMP to withdraw ({known})")
    row = approved[-1]
    state = ledger.states([(document_id, row.version)])[(document_id, row.version)]
    record = journal_withdrawal(settings, ledger, state=state, patient_id=row.patient_id, finess_geo=row.finess_geo,
                                reason=f"withdrawn by an operator: {reason}", run_id=None, owner=settings.ledger.instance,
                                lease=__import__("datetime").timedelta(minutes=settings.ledger.lease_minutes))
    if record is None:
        raise NotInTheDmp(f"document {document_id} v{row.version}: its withdrawal is already being sent")
    ledger.audit(run_id=None, action="WITHDRAW", outcome="requested", finess_geo=row.finess_geo,
                 submission_set_uid=record.submission_set_uid, document_ids=[f"{document_id}:{row.version}"],
                 message=f"reason: {reason}")
    return record
