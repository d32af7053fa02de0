"""ITI-57 Update Document Set: the request that withdraws (Deleted) or archives (Archived) a DMP entry.

The shape is the GIE's own examples' (`TD3.3c_Supprimer_un_document_requete.xml`,
`TD3.3d_Archiver_un_document_requete.xml`; tests/test_update.py compares them): an `lcm:SubmitObjectsRequest`
holding a SubmissionSet (submissionTime, author, contentTypeCode, the SubmissionSet classification, patientId,
sourceId, uniqueId) and one Association `UpdateAvailabilityStatus` from the SubmissionSet to the entry's
entryUUID, with the slots `OriginalStatus` and `NewStatus`. No document, no HasMember, no XAdES signature:
the signed VIHF in the SOAP header authenticates it (as ITI-18). Sent to the registry (`dmp.client`).

Built like the ITI-41 request (`xds`): everything derives from the inputs, so a resend is identical.
`update_errors` is the structural check of such a request, for our own output and for the sandbox DMP.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lxml import etree

from connector.config import Site, Structure, SubmissionSettings
from connector.payload import hl7, ids, xds
from connector.payload.errors import METADATA_INVALID, PayloadError
from connector.payload.lifecycle import APPROVED, DELETED, STATUSES, UPDATE_AVAILABILITY_STATUS, WITHDRAWAL_STATUSES
from connector.payload.xds_read import DTM_RE
from connector.store import Document, Patient

LCM, RIM = xds.LCM, xds.RIM
ASSOCIATION_OBJECT_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
_R = f"{{{RIM}}}"


@dataclass(frozen=True)
class StatusChange:
    entry_uuid: str  # the DocumentEntry whose availability changes (targetObject)
    original_status: str | None
    new_status: str | None


@dataclass(frozen=True)
class UpdateView:
    """What an ITI-57 availability update says; missing parts are None (see `update_errors`)."""

    submission_set_uid: str | None
    submission_set_entry_uuid: str | None
    patient_id: str | None  # CX `<INS>^^^&<OID>&ISO^NH`
    source_id: str | None
    structure_id: str | None  # XON.10 of the SubmissionSet's authorInstitution ("1" + FINESS géographique)
    changes: tuple[StatusChange, ...]


def build_update_availability(
    *,
    structure: Structure,
    site: Site,
    patient: Patient,
    document: Document,
    target_entry_uuid: str,
    submission: SubmissionSettings,
    submission_set_uid: str,
    submission_set_entry_uuid: str,
    submission_time: dt.datetime,
    new_status: str = DELETED,
    original_status: str = APPROVED,
) -> etree._Element:
    """The `lcm:SubmitObjectsRequest` moving the DMP entry `target_entry_uuid` (entryUUID as the registry gave
    it) of `document` from `original_status` to `new_status` (`lifecycle.DELETED` or `ARCHIVED`). The
    SubmissionSet's author and contentTypeCode are the document's, as in its ITI-41 submission set.
    Raises PayloadError naming the document when something required is missing or not allowed."""
    where = f"document {document.document_id}"
    if new_status not in WITHDRAWAL_STATUSES:
        raise PayloadError(METADATA_INVALID, f"{where}: NewStatus {new_status} is not Deleted or Archived")
    if original_status not in STATUSES or original_status == new_status:
        raise PayloadError(METADATA_INVALID, f"{where}: OriginalStatus {original_status} cannot become {new_status}")
    if not xds._is_uuid_urn(target_entry_uuid):
        raise PayloadError(METADATA_INVALID, f"{where}: the entry to update must be a urn:uuid entryUUID")
    if not patient.ins_matricule or not patient.ins_oid:
        raise PayloadError(METADATA_INVALID, f"{where}: its patient has no INS")
    if not document.author_rpps:
        raise PayloadError(METADATA_INVALID, f"{where}: no author_rpps")
    if submission_time.tzinfo is None:  # the ledger keeps naive UTC
        submission_time = submission_time.replace(tzinfo=dt.timezone.utc)

    b = xds._Builder()
    request = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    objects = etree.SubElement(request, f"{_R}RegistryObjectList")
    ss = submission_set_entry_uuid
    package = b.element(objects, "RegistryPackage", id=ss)
    b.slot(package, "submissionTime", hl7.dtm(submission_time))
    author = xds._Author(
        person=hl7.xcn_professional(document.author_rpps, document.author_family_name, document.author_given_name),
        institution=hl7.xon_site(site.name, site.finess_geo),
        specialty=xds._specialty(document),
    )
    b.author(package, ss, xds.SS_AUTHOR, author)
    b.code(package, ss, xds.SS_CONTENT_TYPE, "contentTypeCode", xds.content_type_code(document, submission))
    b.element(package, "Classification", id=ids.child_uuid(ss, "SubmissionSet"),
              classifiedObject=ss, classificationNode=xds.SUBMISSION_SET)
    b.external_id(package, ss, xds.SS_PATIENT_ID, xds.ins_cx(patient), "XDSSubmissionSet.patientId")
    b.external_id(package, ss, xds.SS_SOURCE_ID, structure.source_id, "XDSSubmissionSet.sourceId")
    b.external_id(package, ss, xds.SS_UNIQUE_ID, submission_set_uid, "XDSSubmissionSet.uniqueId")
    association = b.element(
        objects, "Association", id=ids.child_uuid(ss, "UpdateAvailabilityStatus " + target_entry_uuid),
        associationType=UPDATE_AVAILABILITY_STATUS, objectType=ASSOCIATION_OBJECT_TYPE,
        sourceObject=ss, targetObject=target_entry_uuid,
    )
    b.slot(association, "OriginalStatus", original_status)
    b.slot(association, "NewStatus", new_status)
    return request


def parse_update(element: etree._Element) -> UpdateView:
    """The `UpdateView` of an `lcm:SubmitObjectsRequest` (ours or a received one)."""
    package = _submission_set(element)
    ss = package.get("id") if package is not None else None
    changes = tuple(
        StatusChange(a.get("targetObject") or "", _slot(a, "OriginalStatus"), _slot(a, "NewStatus"))
        for a in element.iter(f"{_R}Association")
        if a.get("associationType") == UPDATE_AVAILABILITY_STATUS
    )
    if package is None:
        return UpdateView(None, None, None, None, None, changes)
    return UpdateView(
        submission_set_uid=_external_id(package, xds.SS_UNIQUE_ID),
        submission_set_entry_uuid=ss,
        patient_id=_external_id(package, xds.SS_PATIENT_ID),
        source_id=_external_id(package, xds.SS_SOURCE_ID),
        structure_id=_structure_id(package),
        changes=changes,
    )


def update_errors(element: etree._Element) -> list[str]:
    """What is missing or inconsistent in an ITI-57 availability update (the GIE examples' shape); [] if none.
    Messages name object ids and metadata names, never patient data."""
    if element.tag != f"{{{LCM}}}SubmitObjectsRequest":
        return [f"root element is {element.tag}, not lcm:SubmitObjectsRequest"]
    package = _submission_set(element)
    if package is None:
        return ["no RegistryPackage classified as SubmissionSet"]
    errors = []
    view = parse_update(element)
    ss = view.submission_set_entry_uuid
    time = _slot(package, "submissionTime")
    if not time or not DTM_RE.match(time):
        errors.append("SubmissionSet: submissionTime missing or not YYYYMMDD[hhmmss]")
    authors = _children(package, "Classification", classificationScheme=xds.SS_AUTHOR)
    if not authors:
        errors.append("SubmissionSet: author missing")
    for author in authors:
        if not _slot(author, "authorPerson"):
            errors.append("SubmissionSet: authorPerson missing")
        if not _slot(author, "authorInstitution"):
            errors.append("SubmissionSet: authorInstitution missing")
    content_types = _children(package, "Classification", classificationScheme=xds.SS_CONTENT_TYPE)
    if not content_types or not all(c.get("nodeRepresentation") and _slot(c, "codingScheme") for c in content_types):
        errors.append("SubmissionSet: contentTypeCode missing or without code / codingScheme")
    for label, value in (("patientId", view.patient_id), ("sourceId", view.source_id),
                         ("uniqueId", view.submission_set_uid)):
        if not value:
            errors.append(f"SubmissionSet: {label} missing")
    if element.find(f".//{_R}ExtrinsicObject") is not None:
        errors.append("an availability update carries no DocumentEntry")
    if not view.changes:
        errors.append("no UpdateAvailabilityStatus association")
    for a in element.iter(f"{_R}Association"):
        if a.get("associationType") != UPDATE_AVAILABILITY_STATUS:
            errors.append(f"Association {a.get('id')}: type {a.get('associationType')} is not UpdateAvailabilityStatus")
            continue
        where = f"Association {a.get('id')}"
        if a.get("sourceObject") != ss:
            errors.append(f"{where}: sourceObject is not the SubmissionSet")
        if not xds._is_uuid_urn(a.get("targetObject") or ""):
            errors.append(f"{where}: targetObject is not a urn:uuid entryUUID")
        original, new = _slot_values(a, "OriginalStatus"), _slot_values(a, "NewStatus")
        if len(original) != 1 or original[0] not in STATUSES:
            errors.append(f"{where}: OriginalStatus missing or not an availability status")
        if len(new) != 1 or new[0] not in WITHDRAWAL_STATUSES:
            errors.append(f"{where}: NewStatus missing or not Deleted / Archived")
        elif original == new:
            errors.append(f"{where}: NewStatus equals OriginalStatus")
    return errors


# --- internals ----------------------------------------------------------------------------------

def _children(owner: etree._Element, tag: str, **attrs: str) -> list[etree._Element]:
    return [c for c in owner.iterchildren(f"{_R}{tag}") if all(c.get(k) == v for k, v in attrs.items())]


def _slot_values(owner: etree._Element, name: str) -> list[str]:
    return [(v.text or "").strip() for s in _children(owner, "Slot", name=name) for v in s.iter(f"{_R}Value")]


def _slot(owner: etree._Element, name: str) -> str | None:
    values = _slot_values(owner, name)
    return values[0] if values and values[0] else None


def _external_id(owner: etree._Element, scheme: str) -> str | None:
    found = _children(owner, "ExternalIdentifier", identificationScheme=scheme)
    return (found[0].get("value") or None) if found else None


def _submission_set(element: etree._Element) -> etree._Element | None:
    for cl in element.iter(f"{_R}Classification"):
        if cl.get("classificationNode") == xds.SUBMISSION_SET:
            for package in element.iter(f"{_R}RegistryPackage"):
                if package.get("id") == cl.get("classifiedObject"):
                    return package
    return None


def _structure_id(package: etree._Element) -> str | None:
    for author in _children(package, "Classification", classificationScheme=xds.SS_AUTHOR):
        for xon in _slot_values(author, "authorInstitution"):
            if found := hl7.xon_structure_id(xon):
                return found
    return None
