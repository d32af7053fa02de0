"""XDS.b metadata: the ITI-41 ProvideAndRegisterDocumentSetRequest of one patient's submission set.

`build_provide_and_register` returns the request element with EMPTY `xdsb:Document` elements and the
bytes to attach to each of them (the MTOM transport adds the `xop:Include`s). An entry that replaces a
version already in the DMP (`Entry.replaces`) gets an RPLC association to that version's entryUUID
(see `lifecycle`). Everything is derived
from its inputs only: the same inputs give byte-identical XML, so a resend after an unknown outcome
carries exactly the ids and metadata of the first attempt.

Facts and value sets: dmp-spec-notes §3 (CI-SIS "Partage de documents de santé", DMP value sets,
IHE ITI TF-3). Reading a request back (checks, parsing) lives in `xds_read`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from lxml import etree

from connector.config import Site, Structure, SubmissionSettings
from connector.payload import activity, codes, header, hl7, ids
from connector.payload.errors import METADATA_INVALID, PayloadError
from connector.payload.lifecycle import RPLC, Replaces
from connector.store import Document, Patient
from connector.trust.xmlsig import CanonicalDocument

XDSB = "urn:ihe:iti:xds-b:2007"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NSMAP = {"xdsb": XDSB, "lcm": LCM, "rim": RIM}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Classification and identification schemes (IHE ITI TF-3, notes §3.1).
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY_TYPE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"

SPECIALTY_SCHEME = "1.2.250.1.213.1.1.4.5"
LOINC = "2.16.840.1.113883.6.1"
FACILITY_TYPE_SCHEME = "1.2.250.1.71.4.2.4"
PRACTICE_SETTING_SCHEME = "1.2.250.1.213.1.1.4.9"


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str


CONFIDENTIALITY_NORMAL = Code("N", "2.16.840.1.113883.5.25", "Normal")
MASQUE_PS = Code("MASQUE_PS", "1.2.250.1.213.1.1.4.13", "Masqué aux professionnels de santé")
INVISIBLE_PATIENT = Code("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13", "Non visible par le patient")
INVISIBLE_LEGAL_REPRESENTATIVES = Code(
    "INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13", "Non visible par les représentants légaux du patient"
)
FORMAT_PDF = Code("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré en Pdf/A-1")
# A CDA passed through as received: its content profile is not known here, so say only that the
# mime type describes it. [UNKNOWN] whether JDV_J60 (DMP) accepts it; a structured volet has its own code.
FORMAT_PASSTHROUGH = Code("urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", "mimeType Sufficient")

# Submission-set signature document (notes §3.4).
SIGNATURE_CLASS = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE = Code("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT = Code("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
SIGNATURE_PURPOSE = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")


@dataclass(frozen=True)
class Entry:
    """One document of the submission set; `cda` is the exact attachment (hash and size are of it)."""

    document: Document
    patient: Patient
    cda: bytes
    unique_id: str
    entry_uuid: str
    replaces: Replaces | None = None  # the DMP entry this version replaces (RPLC), if any


@dataclass(frozen=True)
class SignatureEntry:
    """The XAdES signature of the submission set, sent as one more document."""

    xml: bytes
    unique_id: str
    entry_uuid: str
    signing_time: dt.datetime


def sha1_hex(data: bytes) -> str:
    """The XDS hash of a document (a built CDA keeps its own: the bytes are immutable)."""
    return data.sha1_hex if isinstance(data, CanonicalDocument) else hashlib.sha1(data).hexdigest()


def format_code(document: Document) -> Code:
    return FORMAT_PDF if (document.mime_type or "").lower() == "application/pdf" else FORMAT_PASSTHROUGH


def content_type_code(document: Document, submission: SubmissionSettings) -> Code:
    """The submission set's contentTypeCode (JDV_J59): the activity behind its documents (one per set, see
    prepare), from `dmp_document.activity` or `submission.default_activity`."""
    try:
        found = activity.content_type(document.activity or submission.default_activity)
    except activity.ActivityError as exc:  # the rules skip such a document: reaching here is a defect
        raise PayloadError(METADATA_INVALID, f"document {document.document_id}: dmp_document.activity {exc}") from None
    return Code(found.code, found.code_system, found.display)


def class_code(document: Document, submission: SubmissionSettings) -> Code:
    """classCode (JDV_J57) of the document's type as ASS_X16 maps it, else `submission.class_code_fallback`."""
    found = codes.dmp_class_code(document.type_code) or codes.class_code(submission.class_code_fallback)
    if found is None:  # the rules skip such a document: reaching here is a defect
        raise PayloadError(METADATA_INVALID,
                           f"document {document.document_id}: type_code {document.type_code} is not in ASS_X16")
    return Code(found.code, found.code_system, found.display)


def confidentiality_codes(document: Document) -> list[Code]:
    """`N` plus the DMP masking codes set by the store's flags (EXI 07)."""
    codes = [CONFIDENTIALITY_NORMAL]
    if document.mask_professionals:
        codes.append(MASQUE_PS)
    if document.invisible_to_patient:
        codes.append(INVISIBLE_PATIENT)
    if document.invisible_to_legal_representatives:
        codes.append(INVISIBLE_LEGAL_REPRESENTATIVES)
    return codes


def ins_cx(patient: Patient) -> str:
    """XDS patientId: the INS as CX `<INS>^^^&<INS OID>&ISO^NH`."""
    return hl7.cx(patient.ins_matricule, patient.ins_oid, "NH")


def ipp_cx(structure: Structure, patient: Patient) -> str:
    """sourcePatientId: the IPP as CX `<IPP>^^^&<oid_root>.3&ISO^PI`."""
    return hl7.cx(patient.patient_id, ids.ipp_authority(structure.oid_root), "PI")


def build_provide_and_register(
    *,
    structure: Structure,
    site: Site,
    patient: Patient,
    entries: list[Entry],
    submission: SubmissionSettings,
    submission_set_uid: str,
    submission_set_entry_uuid: str,
    submission_time: dt.datetime,
    signature: SignatureEntry | None,
) -> tuple[etree._Element, dict[str, bytes]]:
    """The ITI-41 request of `entries` (one patient, one site) and its attachments
    {xdsb:Document id -> bytes}. The submission-set author is the first entry's author.
    Raises PayloadError naming the document id when required metadata is missing."""
    if not entries:
        raise ValueError("a submission set needs at least one document")
    _check_inputs(site, patient, entries)
    b = _Builder()
    first = entries[0].document
    author = _Author(
        person=hl7.xcn_professional(first.author_rpps, first.author_family_name, first.author_given_name),
        institution=hl7.xon_site(site.name, site.finess_geo),
        specialty=_specialty(first),
    )

    root = etree.Element(f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap=NSMAP)
    request = etree.SubElement(root, f"{{{LCM}}}SubmitObjectsRequest")
    objects = etree.SubElement(request, f"{{{RIM}}}RegistryObjectList")

    package = b.element(objects, "RegistryPackage", id=submission_set_entry_uuid)
    ss = submission_set_entry_uuid
    b.slot(package, "submissionTime", hl7.dtm(submission_time))
    b.author(package, ss, SS_AUTHOR, author)
    b.code(package, ss, SS_CONTENT_TYPE, "contentTypeCode", content_type_code(first, submission))
    b.element(package, "Classification", id=ids.child_uuid(ss, "SubmissionSet"),
              classifiedObject=ss, classificationNode=SUBMISSION_SET)
    b.external_id(package, ss, SS_PATIENT_ID, ins_cx(patient), "XDSSubmissionSet.patientId")
    b.external_id(package, ss, SS_SOURCE_ID, structure.source_id, "XDSSubmissionSet.sourceId")
    b.external_id(package, ss, SS_UNIQUE_ID, submission_set_uid, "XDSSubmissionSet.uniqueId")

    attachments: dict[str, bytes] = {}
    members = []
    for entry in entries:
        doc = entry.document
        type_code = _lookup(codes.type_code, doc.type_code, LOINC, doc.title)
        doc_author = _Author(
            person=hl7.xcn_professional(doc.author_rpps, doc.author_family_name, doc.author_given_name),
            institution=author.institution,
            specialty=_specialty(doc),
        )
        b.document_entry(
            objects,
            _EntryMetadata(
                entry_uuid=entry.entry_uuid,
                unique_id=entry.unique_id,
                mime_type="text/xml",
                title=header.title(doc, type_code.display),
                language=header.LANGUAGE,
                creation_time=doc.created_at,
                service_start=doc.service_start or doc.created_at,
                service_stop=doc.service_stop,
                content=entry.cda,
                source_patient_id=ipp_cx(structure, patient),
                author=doc_author,
                legal_authenticator=_legal_authenticator(doc),
                class_code=class_code(doc, submission),
                type_code=type_code,
                format_code=format_code(doc),
                confidentiality=confidentiality_codes(doc),
                event_codes=[],
            ),
            structure=structure,
            site=site,
            patient=patient,
        )
        attachments[entry.entry_uuid] = entry.cda
        members.append(entry.entry_uuid)

    if signature is not None:
        b.document_entry(
            objects,
            _EntryMetadata(
                entry_uuid=signature.entry_uuid,
                unique_id=signature.unique_id,
                mime_type="text/xml",
                title=SIGNATURE_PURPOSE.display,
                language="art",
                creation_time=signature.signing_time,
                service_start=signature.signing_time,
                service_stop=signature.signing_time,
                content=signature.xml,
                source_patient_id=ins_cx(patient),  # as the GIE's TD2.1 example: the signature has no IPP of its own
                author=author,
                legal_authenticator=_legal_authenticator(first),
                class_code=SIGNATURE_CLASS,
                type_code=SIGNATURE_TYPE,
                format_code=SIGNATURE_FORMAT,
                confidentiality=[CONFIDENTIALITY_NORMAL, INVISIBLE_PATIENT, MASQUE_PS],
                event_codes=[SIGNATURE_PURPOSE],
            ),
            structure=structure,
            site=site,
            patient=patient,
        )
        attachments[signature.entry_uuid] = signature.xml
        members.append(signature.entry_uuid)

    for member in members:
        association = b.element(objects, "Association", id=ids.child_uuid(ss, "HasMember " + member),
                                associationType=HAS_MEMBER, sourceObject=ss, targetObject=member)
        b.slot(association, "SubmissionSetStatus", "Original")
    if signature is not None:
        signs = b.element(objects, "Association", id=ids.child_uuid(signature.entry_uuid, "signs"),
                          associationType=SIGNS, sourceObject=signature.entry_uuid, targetObject=ss)
        b.slot(signs, "SubmissionSetStatus", "Original")  # IHE asks it of HasMember only; the GIE's TD2.1 has it here too
    for entry in entries:
        if entry.replaces is not None:  # from the new entry to the registry's entryUUID of the replaced one
            b.element(objects, "Association", id=ids.child_uuid(entry.entry_uuid, "RPLC " + entry.replaces.entry_uuid),
                      associationType=RPLC, sourceObject=entry.entry_uuid, targetObject=entry.replaces.entry_uuid)

    for document_id in attachments:
        etree.SubElement(root, f"{{{XDSB}}}Document", id=document_id)
    return root, attachments


def metadata_errors(
    element: etree._Element, attachments: dict[str, bytes], *, require_signature: bool = False
) -> list[str]:
    """Missing or inconsistent DMP metadata of a request and its attachments (see `xds_read`)."""
    from connector.payload import xds_read  # imported here: xds_read reads this module's constants

    return xds_read.metadata_errors(element, attachments, require_signature=require_signature)


def parse_request(element: etree._Element):
    """The `xds_read.SubmissionView` of a request (see `xds_read`)."""
    from connector.payload import xds_read

    return xds_read.parse_request(element)


# --- internals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Author:
    person: str
    institution: str
    specialty: str | None


@dataclass(frozen=True)
class _EntryMetadata:
    entry_uuid: str
    unique_id: str
    mime_type: str
    title: str
    language: str
    creation_time: dt.datetime
    service_start: dt.datetime
    service_stop: dt.datetime | None
    content: bytes
    source_patient_id: str
    author: _Author
    legal_authenticator: str
    class_code: Code
    type_code: Code
    format_code: Code
    confidentiality: list[Code]
    event_codes: list[Code]


class _Builder:
    """ebRIM element helpers; every child id is derived from its owner's id and role."""

    @staticmethod
    def element(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, f"{{{RIM}}}{tag}", attrs)

    def slot(self, parent: etree._Element, name: str, *values: str) -> None:
        value_list = self.element(self.element(parent, "Slot", name=name), "ValueList")
        for value in values:
            self.element(value_list, "Value").text = value

    def name(self, parent: etree._Element, text: str) -> None:
        string = self.element(self.element(parent, "Name"), "LocalizedString", value=text)
        string.set(XML_LANG, "fr-FR")

    def code(self, parent, owner: str, scheme: str, role: str, code: Code) -> None:
        node = self.element(parent, "Classification", id=ids.child_uuid(owner, f"{role} {code.scheme} {code.code}"),
                            classificationScheme=scheme, classifiedObject=owner, nodeRepresentation=code.code)
        self.slot(node, "codingScheme", code.scheme)
        self.name(node, code.display)

    def author(self, parent, owner: str, scheme: str, author: _Author) -> None:
        node = self.element(parent, "Classification", id=ids.child_uuid(owner, "author"),
                            classificationScheme=scheme, classifiedObject=owner, nodeRepresentation="")
        self.slot(node, "authorPerson", author.person)
        self.slot(node, "authorInstitution", author.institution)
        if author.specialty:
            self.slot(node, "authorSpecialty", author.specialty)

    def external_id(self, parent, owner: str, scheme: str, value: str, label: str) -> None:
        node = self.element(parent, "ExternalIdentifier", id=ids.child_uuid(owner, label),
                            registryObject=owner, identificationScheme=scheme, value=value)
        self.name(node, label)

    def document_entry(self, parent, m: _EntryMetadata, *, structure: Structure, site: Site, patient: Patient) -> None:
        eid = m.entry_uuid
        eo = self.element(parent, "ExtrinsicObject", id=eid, mimeType=m.mime_type, objectType=DOCUMENT_ENTRY)
        # Slots first (ebRIM sequence), in the order of IHE ITI TF-3 tables.
        self.slot(eo, "creationTime", hl7.dtm(m.creation_time))
        self.slot(eo, "languageCode", m.language)
        self.slot(eo, "legalAuthenticator", m.legal_authenticator)
        self.slot(eo, "serviceStartTime", hl7.dtm(m.service_start))
        if m.service_stop:
            self.slot(eo, "serviceStopTime", hl7.dtm(m.service_stop))
        self.slot(eo, "hash", sha1_hex(m.content))
        self.slot(eo, "size", str(len(m.content)))
        self.slot(eo, "sourcePatientId", m.source_patient_id)
        if info := _source_patient_info(patient):
            self.slot(eo, "sourcePatientInfo", *info)
        self.name(eo, m.title)
        self.author(eo, eid, DE_AUTHOR, m.author)
        self.code(eo, eid, DE_CLASS_CODE, "classCode", m.class_code)
        for code in m.confidentiality:
            self.code(eo, eid, DE_CONFIDENTIALITY, "confidentialityCode", code)
        for code in m.event_codes:
            self.code(eo, eid, DE_EVENT_CODE, "eventCodeList", code)
        self.code(eo, eid, DE_FORMAT_CODE, "formatCode", m.format_code)
        self.code(eo, eid, DE_FACILITY_TYPE, "healthcareFacilityTypeCode",
                  _lookup(codes.facility_type, site.healthcare_facility_type, FACILITY_TYPE_SCHEME))
        self.code(eo, eid, DE_PRACTICE_SETTING, "practiceSettingCode",
                  _lookup(codes.practice_setting, site.practice_setting, PRACTICE_SETTING_SCHEME))
        self.code(eo, eid, DE_TYPE_CODE, "typeCode", m.type_code)
        self.external_id(eo, eid, DE_PATIENT_ID, ins_cx(patient), "XDSDocumentEntry.patientId")
        self.external_id(eo, eid, DE_UNIQUE_ID, m.unique_id, "XDSDocumentEntry.uniqueId")


def _source_patient_info(patient: Patient) -> list[str]:
    """PID-5 (birth name, first birth given name), PID-7 (birth date), PID-8 (sex), when known."""
    values = []
    if patient.birth_family_name:
        first_given = patient.given_names[0] if patient.given_names else None
        values.append("PID-5|" + hl7.xpn_legal(patient.birth_family_name, first_given))
    if patient.birth_date:
        values.append("PID-7|" + hl7.date(patient.birth_date))
    if patient.sex:
        values.append("PID-8|" + hl7.escape(patient.sex))
    return values


def _legal_authenticator(doc: Document) -> str:
    """legalAuthenticator: the CDA's (`header`), the author unless the store names another professional."""
    if header.legal_authenticator_is_author(doc):
        return hl7.xcn_professional(doc.author_rpps, doc.author_family_name, doc.author_given_name)
    return hl7.xcn_professional(header.legal_authenticator_rpps(doc))


def _lookup(table, code: str, default_scheme: str, default_display: str | None = None) -> Code:
    """The code with the code system and display of its CI-SIS value set; when the value set does
    not list it (rules decide whether that is allowed), `default_scheme` and a fallback display."""
    known = table(code)
    if known is not None:
        return Code(code, known.code_system or default_scheme, known.display or default_display or code)
    return Code(code, default_scheme, default_display or code)


def _specialty(doc: Document) -> str | None:
    """authorSpecialty `code^display^codingScheme`, as the CDA's author code (`header`)."""
    code = header.author_specialty(doc)
    return hl7.ce(code.code, code.display, code.code_system or SPECIALTY_SCHEME) if code else None


# ebRIM 3.0 (rim.xsd): a Slot Value is a LongName, a LocalizedString value a FreeFormText.
SLOT_VALUE_MAX, NAME_MAX = 256, 1024


def value_too_long(structure: Structure, document: Document, patient: Patient) -> str | None:
    """The first of this document's own XDS metadata values over its ebRIM length (the column(s) it comes
    from), else None: checked per document, before grouping, since one such value fails the whole request."""
    type_code = _lookup(codes.type_code, document.type_code or "", LOINC, document.title)
    values = [
        ("dmp_document.author_family_name + author_given_name", SLOT_VALUE_MAX,
         hl7.xcn_professional(document.author_rpps or "", document.author_family_name, document.author_given_name)),
        ("dmp_document.author_specialty_code", SLOT_VALUE_MAX, _specialty(document) or ""),
        ("dmp_document.legal_authenticator_rpps", SLOT_VALUE_MAX, _legal_authenticator(document) or ""),
        ("dmp_document.patient_id", SLOT_VALUE_MAX, ipp_cx(structure, patient)),
        ("dmp_patient.birth_family_name + birth_given_names", SLOT_VALUE_MAX,
         max(_source_patient_info(patient), key=len, default="")),
        ("dmp_document.title", NAME_MAX, document.title or type_code.display),
        ("dmp_document.type_code", SLOT_VALUE_MAX, type_code.code),
        ("dmp_document.mime_type", SLOT_VALUE_MAX, document.mime_type or ""),
    ]
    for column, limit, value in values:
        if len(value) > limit:
            return f"{column}: {len(value)} characters in the XDS metadata, over {limit}"
    return None


def _check_inputs(site: Site, patient: Patient, entries: list[Entry]) -> None:
    if not patient.ins_matricule or not patient.ins_oid:
        raise PayloadError(METADATA_INVALID, f"document {entries[0].document.document_id}: its patient has no INS")
    for entry in entries:
        doc = entry.document
        if doc.patient_id != patient.patient_id:
            raise ValueError(f"document {doc.document_id}: belongs to another patient than its submission set")
        missing = [name for name, value in (
            ("author_rpps", doc.author_rpps), ("type_code", doc.type_code), ("created_at", doc.created_at),
        ) if not value]
        if missing:
            raise PayloadError(METADATA_INVALID, f"document {doc.document_id}: no {', '.join(missing)}")
        if doc.finess_geo and doc.finess_geo != site.finess_geo:
            raise ValueError(f"document {doc.document_id}: FINESS géographique differs from its submission set's site")
    submitted = {e.entry_uuid for e in entries} | {e.unique_id for e in entries}
    for entry in entries:
        if entry.replaces is not None and ({entry.replaces.entry_uuid, entry.replaces.unique_id} & submitted
                                           or not _is_uuid_urn(entry.replaces.entry_uuid)):
            raise PayloadError(METADATA_INVALID, f"document {entry.document.document_id}: the entry it replaces must be a "
                                                 "urn:uuid entryUUID outside its own submission set")


def _is_uuid_urn(value: str) -> bool:
    try:
        uuid.UUID(value.removeprefix("urn:uuid:"))
    except ValueError:
        return False
    return value.startswith("urn:uuid:")
