"""Reading an ITI-41 request back: structural checks of the DMP metadata and a parsed view.

Used on both sides of the wire: the connector checks what it is about to send, the sandbox DMP
checks and stores what it received (`as_received=True`). The two differ where the GIE's own TD2.1
example shows the DMP accepts more than we allow ourselves (tests/test_golden.py lists each point):

| point                                   | our output (self-check)         | a received request (the DMP)          |
|-----------------------------------------|---------------------------------|---------------------------------------|
| authorInstitution id (XON.10, IDNST)    | `1` + FINESS géographique: we   | any national structure id (TD2.1: a   |
|                                         | are a hospital site             | private practice, `4` + RPPS + rank)  |
| DocumentEntry hash and size             | required: the DMP then checks   | optional for a document source (IHE   |
|                                         | our bytes end to end            | ITI TF-3 4.3.1: the repository        |
|                                         |                                 | computes them); checked when present  |
| xdsb:Document id vs ExtrinsicObject id  | identical                       | identical, else the one id equal      |
|                                         |                                 | ignoring case (TD2.1: `documentME2`   |
|                                         |                                 | attaches `DocumentME2`)               |

Messages name object ids and metadata names, never patient data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from connector.payload import hl7
from connector.payload.lifecycle import RPLC
from connector.payload.xds import (
    DE_AUTHOR, DE_CLASS_CODE, DE_CONFIDENTIALITY, DE_FACILITY_TYPE, DE_FORMAT_CODE, DE_PATIENT_ID,
    DE_PRACTICE_SETTING, DE_TYPE_CODE, DE_UNIQUE_ID, DOCUMENT_ENTRY, HAS_MEMBER, RIM, SIGNATURE_CLASS, SIGNS,
    SS_AUTHOR, SS_CONTENT_TYPE, SS_PATIENT_ID, SS_SOURCE_ID, SS_UNIQUE_ID, SUBMISSION_SET, XDSB, sha1_hex,
)

_R = f"{{{RIM}}}"
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
DTM_RE = re.compile(r"^[0-9]{4}([0-9]{2}){0,5}$")
SHA1_RE = re.compile(r"^[0-9a-fA-F]{40}$")
UUID_URN_RE = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# legalAuthenticator: on every DocumentEntry of the GIE's examples, the signature's included.
_REQUIRED_DE_SLOTS = ("creationTime", "languageCode", "legalAuthenticator", "serviceStartTime", "sourcePatientId")
_OWN_DE_SLOTS = ("hash", "size")  # optional for a document source, always sent by us
_REQUIRED_DE_CODES = {
    DE_CLASS_CODE: "classCode",
    DE_CONFIDENTIALITY: "confidentialityCode",
    DE_FORMAT_CODE: "formatCode",
    DE_FACILITY_TYPE: "healthcareFacilityTypeCode",
    DE_PRACTICE_SETTING: "practiceSettingCode",
    DE_TYPE_CODE: "typeCode",
}


@dataclass(frozen=True)
class EntryView:
    entry_uuid: str
    unique_id: str | None
    patient_id: str | None  # CX
    hash: str | None
    size: int | None
    mime_type: str | None
    finess_geo: str | None
    type_code: str | None
    class_code: str | None
    format_code: str | None
    confidentiality_codes: tuple[str, ...]
    title: str | None
    replaces: str | None = None  # entryUUID this entry replaces (RPLC association), if any


@dataclass(frozen=True)
class SubmissionView:
    submission_set_uid: str | None
    submission_set_entry_uuid: str | None
    patient_id: str | None  # CX `<INS>^^^&<OID>&ISO^NH`
    source_id: str | None
    submission_time: str | None
    finess_geo: str | None
    content_type_code: str | None
    entries: tuple[EntryView, ...]  # the documents, signature excluded
    signature: EntryView | None

    @property
    def ins(self) -> tuple[str, str | None] | None:
        """(INS, INS OID) of the patientId, or None."""
        if not self.patient_id:
            return None
        value, oid, _ = hl7.parse_cx(self.patient_id)
        return value, oid


def parse_request(element: etree._Element) -> SubmissionView:
    """What a ProvideAndRegisterDocumentSetRequest says; missing parts are None (see metadata_errors)."""
    return _parse(element, _submission_set(element), [_Object(eo) for eo in element.iter(_EXTRINSIC)])


def replacements(element: etree._Element) -> dict[str, str]:
    """{entryUUID of a new DocumentEntry: entryUUID it replaces} from the request's RPLC associations."""
    return {a.get("sourceObject"): a.get("targetObject") for a in element.iter(_ASSOCIATION)
            if a.get("associationType") == RPLC}


def metadata_errors(
    element: etree._Element, attachments: dict[str, bytes], *, require_signature: bool = False,
    as_received: bool = False,
) -> list[str]:
    """Missing or inconsistent DMP metadata (notes §3) in a request and its attachments; [] if none.
    `as_received`: the checks the DMP makes on a request it receives, not the stricter ones of our own
    output (see the module's table)."""
    errors: list[str] = []
    if as_received:
        attachments = attachments_by_entry(element, attachments)
    required_slots = _REQUIRED_DE_SLOTS if as_received else _REQUIRED_DE_SLOTS + _OWN_DE_SLOTS
    if element.tag != f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest":
        return [f"root element is {element.tag}, not xdsb:ProvideAndRegisterDocumentSetRequest"]
    package = _submission_set(element)
    if package is None:
        return ["no RegistryPackage classified as SubmissionSet"]
    ss = package.element.get("id")
    extrinsic = [_Object(eo) for eo in element.iter(_EXTRINSIC)]
    view = _parse(element, package, extrinsic)
    associations = {
        (a.get("associationType"), a.get("sourceObject"), a.get("targetObject")) for a in element.iter(_ASSOCIATION)
    }

    # Submission set.
    time = package.slot("submissionTime")
    if not time or not DTM_RE.match(time):
        errors.append("SubmissionSet: submissionTime missing or not YYYYMMDD[hhmmss]")
    errors += _author_errors(package, SS_AUTHOR, "SubmissionSet", as_received)
    errors += _code_errors(package, SS_CONTENT_TYPE, "SubmissionSet", "contentTypeCode")
    for scheme, label in ((SS_PATIENT_ID, "patientId"), (SS_SOURCE_ID, "sourceId"), (SS_UNIQUE_ID, "uniqueId")):
        if not package.external_id(scheme):
            errors.append(f"SubmissionSet: {label} missing")
    if view.submission_set_uid and not _short_oid(view.submission_set_uid):
        errors.append("SubmissionSet: uniqueId is not an OID of at most 64 characters")
    if view.source_id and not OID_RE.match(view.source_id):
        errors.append("SubmissionSet: sourceId is not an OID")
    if view.patient_id and not _is_ins_cx(view.patient_id):
        errors.append("SubmissionSet: patientId is not a CX of type NH")

    # Document entries (the signature document included).
    if not view.entries:
        errors.append("no DocumentEntry")
    finesses = {view.finess_geo} if view.finess_geo else set()
    unique_ids: list[str] = [view.submission_set_uid or ""]
    for eo in extrinsic:
        eid = eo.element.get("id")
        where = f"DocumentEntry {eid}"
        if eo.element.get("objectType") != DOCUMENT_ENTRY:
            errors.append(f"{where}: objectType is not DocumentEntry")
        if not eo.element.get("mimeType"):
            errors.append(f"{where}: mimeType missing")
        for name in required_slots:
            if not eo.slot(name):
                errors.append(f"{where}: {name} missing")
        for name in ("creationTime", "serviceStartTime", "serviceStopTime"):
            value = eo.slot(name)
            if value and not DTM_RE.match(value):
                errors.append(f"{where}: {name} is not YYYYMMDD[hhmmss]")
        errors += _author_errors(eo, DE_AUTHOR, where, as_received)
        for scheme, label in _REQUIRED_DE_CODES.items():
            errors += _code_errors(eo, scheme, where, label)
        patient_id = eo.external_id(DE_PATIENT_ID)
        if not patient_id:
            errors.append(f"{where}: patientId missing")
        elif patient_id != view.patient_id:
            errors.append(f"{where}: patientId differs from the SubmissionSet's")
        unique_id = eo.external_id(DE_UNIQUE_ID)
        if not unique_id:
            errors.append(f"{where}: uniqueId missing")
        elif not _short_oid(unique_id):
            errors.append(f"{where}: uniqueId is not an OID of at most 64 characters")
        unique_ids.append(unique_id or "")
        if finess := _finess(eo, DE_AUTHOR):
            finesses.add(finess)
        errors += _content_errors(eo, where, attachments)
        if (HAS_MEMBER, ss, eid) not in associations:
            errors.append(f"{where}: no HasMember association from the SubmissionSet")

    if len(finesses) > 1:
        found = ", ".join(sorted(finesses))
        errors.append(f"authorInstitution: FINESS géographique not identical everywhere ({found})")
    duplicates = sorted({u for u in unique_ids if u and unique_ids.count(u) > 1})
    if duplicates:
        errors.append(f"uniqueId used twice: {', '.join(duplicates)}")
    known = {eo.element.get("id") for eo in extrinsic}
    matched = _entry_ids(element) if as_received else {}
    for doc in element.findall(f"{{{XDSB}}}Document"):
        if matched.get(doc.get("id"), doc.get("id")) not in known:
            errors.append(f"xdsb:Document {doc.get('id')}: no DocumentEntry with this id")
    if view.signature is not None and (SIGNS, view.signature.entry_uuid, ss) not in associations:
        errors.append(f"DocumentEntry {view.signature.entry_uuid}: signature without a 'signs' association")
    if require_signature and view.signature is None:
        errors.append("no submission-set signature document")
    errors += _replacement_errors(element, view, known | {ss})
    return errors


def _replacement_errors(element: etree._Element, view: SubmissionView, submitted: set[str]) -> list[str]:
    """RPLC associations (IHE ITI TF-3 4.2.2): from a DocumentEntry of this request, one per entry, to an
    entryUUID (urn:uuid) that is not an object of this request."""
    errors, sources = [], []
    documents = {e.entry_uuid for e in view.entries}
    for a in element.iter(_ASSOCIATION):
        if a.get("associationType") != RPLC:
            continue
        source, target = a.get("sourceObject"), a.get("targetObject") or ""
        sources.append(source)
        if source not in documents:
            errors.append(f"RPLC association {a.get('id')}: its sourceObject is not a DocumentEntry of the request")
        if not UUID_URN_RE.match(target):
            errors.append(f"RPLC association {a.get('id')}: its targetObject is not a urn:uuid entryUUID")
        elif target in submitted:
            errors.append(f"RPLC association {a.get('id')}: its targetObject is an object of the same request")
    for source in sorted({s for s in sources if s and sources.count(s) > 1}):
        errors.append(f"DocumentEntry {source}: replaces more than one entry")
    return errors


def attachments_by_entry(element: etree._Element, attachments: dict[str, bytes]) -> dict[str, bytes]:
    """`attachments` ({xdsb:Document id: bytes}) keyed by the id of the DocumentEntry each attaches: its
    own id, or the one DocumentEntry id equal to it ignoring case (as the GIE's TD2.1 example has it)."""
    matched = _entry_ids(element)
    return {matched.get(doc_id, doc_id): content for doc_id, content in attachments.items()}


# --- internals ----------------------------------------------------------------------------------

_SLOT, _VALUE_LIST, _VALUE = f"{_R}Slot", f"{_R}ValueList", f"{_R}Value"
_CLASSIFICATION = f"{_R}Classification"
_EXTERNAL_ID, _EXTRINSIC, _ASSOCIATION = f"{_R}ExternalIdentifier", f"{_R}ExtrinsicObject", f"{_R}Association"


class _Object:
    """A registry object's slots, classifications and external identifiers, read once: a request is
    checked by dozens of lookups per object, and walking its children for each one cost milliseconds."""

    __slots__ = ("element", "slots", "classifications", "external_ids")

    def __init__(self, element: etree._Element):
        self.element = element
        self.slots: dict[str, list[str]] = {}
        self.classifications: dict[str, list[_Object]] = {}
        self.external_ids: dict[str, str | None] = {}
        for child in element:
            if child.tag == _SLOT:
                values = self.slots.setdefault(child.get("name"), [])
                for value_list in child.iterchildren(_VALUE_LIST):
                    values += [(v.text or "").strip() for v in value_list.iterchildren(_VALUE)]
            elif child.tag == _CLASSIFICATION:
                self.classifications.setdefault(child.get("classificationScheme"), []).append(_Object(child))
            elif child.tag == _EXTERNAL_ID:
                self.external_ids.setdefault(child.get("identificationScheme"), child.get("value") or None)

    def slot(self, name: str) -> str | None:
        values = self.slots.get(name)
        return values[0] if values and values[0] else None

    def external_id(self, scheme: str) -> str | None:
        return self.external_ids.get(scheme)

    def code(self, scheme: str) -> str | None:
        found = self.classifications.get(scheme)
        return (found[0].element.get("nodeRepresentation") or None) if found else None


def _parse(element: etree._Element, package: _Object | None, extrinsic: list[_Object]) -> SubmissionView:
    entries, signature = [], None
    replaced = replacements(element)
    for eo in extrinsic:
        view = _entry_view(eo, replaced.get(eo.element.get("id")))
        if view.class_code == SIGNATURE_CLASS.code:
            signature = view
        else:
            entries.append(view)
    if package is None:
        return SubmissionView(None, None, None, None, None, None, None, tuple(entries), signature)
    return SubmissionView(
        submission_set_uid=package.external_id(SS_UNIQUE_ID),
        submission_set_entry_uuid=package.element.get("id"),
        patient_id=package.external_id(SS_PATIENT_ID),
        source_id=package.external_id(SS_SOURCE_ID),
        submission_time=package.slot("submissionTime"),
        finess_geo=_finess(package, SS_AUTHOR),
        content_type_code=package.code(SS_CONTENT_TYPE),
        entries=tuple(entries),
        signature=signature,
    )


def _entry_ids(element: etree._Element) -> dict[str, str]:
    """{xdsb:Document id: the DocumentEntry id it attaches} for the ids that differ from their entry's in
    case only, and only when exactly one entry id matches that way."""
    entries = {eo.get("id") for eo in element.iter(_EXTRINSIC)}
    by_folded: dict[str, list[str]] = {}
    for entry_id in entries:
        by_folded.setdefault((entry_id or "").casefold(), []).append(entry_id)
    matched = {}
    for doc in element.iterfind(f"{{{XDSB}}}Document"):
        doc_id = doc.get("id")
        candidates = by_folded.get((doc_id or "").casefold(), [])
        if doc_id not in entries and len(candidates) == 1:
            matched[doc_id] = candidates[0]
    return matched


def _submission_set(element: etree._Element) -> _Object | None:
    for cl in element.iter(_CLASSIFICATION):
        if cl.get("classificationNode") == SUBMISSION_SET:
            target = cl.get("classifiedObject")
            for package in element.iter(f"{_R}RegistryPackage"):
                if package.get("id") == target:
                    return _Object(package)
    return None


def _finess(owner: _Object, author_scheme: str) -> str | None:
    for author in owner.classifications.get(author_scheme, ()):
        for institution in author.slots.get("authorInstitution", ()):
            if finess := hl7.xon_finess(institution):
                return finess
    return None


def _entry_view(eo: _Object, replaces: str | None = None) -> EntryView:
    size = eo.slot("size")
    name = eo.element.find(f"{_R}Name/{_R}LocalizedString")
    return EntryView(
        entry_uuid=eo.element.get("id"),
        unique_id=eo.external_id(DE_UNIQUE_ID),
        patient_id=eo.external_id(DE_PATIENT_ID),
        hash=eo.slot("hash"),
        size=int(size) if size and size.isdigit() else None,
        mime_type=eo.element.get("mimeType"),
        finess_geo=_finess(eo, DE_AUTHOR),
        type_code=eo.code(DE_TYPE_CODE),
        class_code=eo.code(DE_CLASS_CODE),
        format_code=eo.code(DE_FORMAT_CODE),
        confidentiality_codes=tuple(
            c.element.get("nodeRepresentation") or "" for c in eo.classifications.get(DE_CONFIDENTIALITY, ())
        ),
        title=name.get("value") if name is not None else None,
        replaces=replaces,
    )


def _author_errors(owner: _Object, scheme: str, where: str, as_received: bool) -> list[str]:
    authors = owner.classifications.get(scheme)
    if not authors:
        return [f"{where}: author missing"]
    errors = []
    for author in authors:
        if not author.slot("authorPerson"):
            errors.append(f"{where}: authorPerson missing")
        institution = author.slot("authorInstitution")
        if not institution:
            errors.append(f"{where}: authorInstitution missing")
        elif as_received and not hl7.xon_structure_id(institution):
            errors.append(f"{where}: authorInstitution carries no national structure id (IDNST)")
        elif not as_received and not hl7.xon_finess(institution):
            errors.append(f"{where}: authorInstitution carries no FINESS (IDNST)")
    return errors


def _code_errors(owner: _Object, scheme: str, where: str, label: str) -> list[str]:
    found = owner.classifications.get(scheme)
    if not found:
        return [f"{where}: {label} missing"]
    errors = []
    for cl in found:
        if not cl.element.get("nodeRepresentation"):
            errors.append(f"{where}: {label} without code")
        if not cl.slot("codingScheme"):
            errors.append(f"{where}: {label} without codingScheme")
    return errors


def _content_errors(eo: _Object, where: str, attachments: dict[str, bytes]) -> list[str]:
    content = attachments.get(eo.element.get("id"))
    if content is None:
        return [f"{where}: no attached document"]
    errors = []
    declared_hash, declared_size = eo.slot("hash"), eo.slot("size")
    if declared_hash and (
        not SHA1_RE.match(declared_hash) or declared_hash.lower() != sha1_hex(content)
    ):
        errors.append(f"{where}: hash does not match the attached document")
    if declared_size and declared_size != str(len(content)):
        errors.append(f"{where}: size does not match the attached document")
    return errors


def _short_oid(value: str) -> bool:
    return bool(OID_RE.match(value)) and len(value) <= 64


def _is_ins_cx(value: str) -> bool:
    ident, oid, type_code = hl7.parse_cx(value)
    return bool(ident) and bool(oid) and type_code == "NH"
