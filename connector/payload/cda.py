"""CDA R2 level 1 (CI-SIS "structuration minimale", IHE XDS-SD) wrapping a PDF, and the checks of a
store document that already is a CDA.

The header follows the ANS example `ExemplesCDA/DOC_NON_STRUCTURE_CDA-R2-N1.xml` and the schematron
of template 1.2.250.1.213.1.1.1.1. The output is a pure function of its inputs (no clock), so a resend
rebuilds the same bytes, hence the same hash in the XDS metadata.

Identifier choices (see also `ids.py`):
- `id@root` = the document uniqueId; `setId@root` = `ids.document_set_id` (shared by all versions),
  `versionNumber` = the store version.
- a replacement (`replaces`, see `lifecycle`) also carries `relatedDocument typeCode="RPLC"` whose
  `parentDocument` has the replaced version's id (its uniqueId) and versionNumber; its own version is higher.
- patient: INS (root = its OID, extension = matricule) then IPP (root = `ids.ipp_authority`, i.e.
  `<oid_root>.3`, as the XDS sourcePatientId).
- author organisation, encounter facility: the site (`1` + FINESS géographique, root 1.2.250.1.71.4.2.2);
  custodian: the legal entity (`1` + FINESS juridique), which holds the documents and the certificates.
- times: the store's naive wall-clock values are Europe/Paris, written with their UTC offset.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

from lxml import etree

from connector.config import Site, Structure
from connector.payload import codes, header, hl7, ids
from connector.payload.errors import CDA_INVALID, METADATA_INVALID, PayloadError
from connector.payload.lifecycle import Replaces
from connector.payload.validate import parse_untrusted
from connector.store import Document, Patient
from connector.trust.xmlsig import XML_DECLARATION, CanonicalDocument

HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_V3 = f"{{{HL7}}}"

INS_OIDS = {
    "1.2.250.1.213.1.4.8",  # INS-NIR
    "1.2.250.1.213.1.4.9",  # INS-NIA
    "1.2.250.1.213.1.4.10",  # INS-NIR de test
    "1.2.250.1.213.1.4.11",  # INS-NIR de démonstration
}
TEMPLATE_IDS = (
    "2.16.840.1.113883.2.8.2.1",  # HL7 France
    "1.2.250.1.213.1.1.1.1",  # CI-SIS structuration minimale
    "1.3.6.1.4.1.19376.1.2.20",  # IHE XDS-SD (scanned/PDF body)
)
# store sex -> JDV_J143_AdministrativeGender_CISIS (1.2.250.1.213.1.1.5.590): unknown is "UN", not "U"
GENDERS = {"M": ("M", "Masculin"), "F": ("F", "Féminin"), "U": ("UN", "Inconnu")}
GENDER_SYSTEM = "2.16.840.1.113883.5.1"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"


def build_cda(
    document: Document,
    patient: Patient,
    site: Site,
    structure: Structure,
    content: bytes,
    *,
    unique_id: str,
    now: dt.datetime | None = None,
    replaces: Replaces | None = None,
) -> bytes:
    """The CDA R2 level 1 document wrapping `content` (a PDF), as UTF-8 XML: a declaration, then the
    document in canonical form (C14N 1.0). With `replaces`, the new version of that DMP entry (RPLC).

    `now` is only used when the store gives no creation time (pass the stored submission time to keep
    resends identical). Raises PayloadError(METADATA_INVALID) naming the document and the missing or
    unknown field."""
    return build_cda_tree(document, patient, site, structure, content, unique_id=unique_id, now=now,
                          replaces=replaces)[0]


def build_cda_tree(
    document: Document,
    patient: Patient,
    site: Site,
    structure: Structure,
    content: bytes,
    *,
    unique_id: str,
    now: dt.datetime | None = None,
    replaces: Replaces | None = None,
) -> tuple[bytes, etree._ElementTree]:
    """`build_cda`, and the tree its bytes are written from, for the validation: the bytes are that tree's
    canonical form with the body's placeholder text replaced by the PDF's base64, which neither the XSD (ED is
    mixed text) nor the schematron (a non-empty body) tells apart; parsing the bytes back would cost a parse of
    the whole base64 for the same verdict."""
    doc_id = document.document_id
    type_code = codes.type_code(document.type_code)
    missing = _missing_fields(document, patient, type_code, now)
    if not content:
        missing.append("content is empty")
    missing += _replacement_problems(document, unique_id, replaces)
    if missing:
        raise PayloadError(METADATA_INVALID, f"document {doc_id}: cannot build the CDA, {'; '.join(missing)}")
    facility = codes.facility_type(site.healthcare_facility_type)
    setting = codes.practice_setting(site.practice_setting)
    if facility is None or setting is None:
        wrong = "healthcare_facility_type" if facility is None else "practice_setting"
        raise PayloadError(METADATA_INVALID, f"document {doc_id}: site {site.finess_geo} {wrong} is not in its value set")
    created = document.created_at or now
    legal_rpps = header.legal_authenticator_rpps(document)

    b = _Builder()
    root = b.root
    b.add(root, "realmCode", code="FR")
    b.add(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    for template in TEMPLATE_IDS:
        b.add(root, "templateId", root=template)
    b.add(root, "id", root=unique_id)
    b.code(root, "code", type_code)
    b.add(root, "title", text=header.title(document, type_code.display))
    b.add(root, "effectiveTime", value=timestamp(created))
    b.add(root, "confidentialityCode", code="N", displayName="Normal", codeSystem=CONFIDENTIALITY_SYSTEM)
    b.add(root, "languageCode", code=header.LANGUAGE)
    b.add(root, "setId", root=ids.document_set_id(structure.oid_root, doc_id))
    b.add(root, "versionNumber", value=str(document.version))

    role = b.add(b.add(root, "recordTarget"), "patientRole")
    b.add(role, "id", root=patient.ins_oid, extension=patient.ins_matricule)
    b.add(role, "id", root=ids.ipp_authority(structure.oid_root), extension=patient.patient_id)
    person = b.add(role, "patient", classCode="PSN")
    name = b.add(person, "name")
    b.add(name, "family", qualifier="BR", text=patient.birth_family_name)
    b.add(name, "given", text=" ".join(patient.given_names))  # all birth given names
    b.add(name, "given", qualifier="BR", text=patient.given_names[0])  # first birth given name
    if patient.used_family_name:
        b.add(name, "family", qualifier="CL", text=patient.used_family_name)
    if patient.used_given_name:
        b.add(name, "given", qualifier="CL", text=patient.used_given_name)
    gender, gender_display = GENDERS[patient.sex]
    b.add(person, "administrativeGenderCode", code=gender, displayName=gender_display, codeSystem=GENDER_SYSTEM)
    b.add(person, "birthTime", value=patient.birth_date.strftime("%Y%m%d"))
    place = b.add(b.add(person, "birthplace"), "place")
    b.add(b.add(place, "addr"), "county", text=patient.birth_place_code)  # COG code of the birth place

    author = b.add(root, "author")
    b.add(author, "time", value=timestamp(created))
    assigned = b.add(author, "assignedAuthor")
    b.add(assigned, "id", root=hl7.RPPS_AUTHORITY, extension="8" + document.author_rpps)
    specialty = header.author_specialty(document)
    if specialty is not None:
        b.code(assigned, "code", specialty)
    b.person_name(b.add(assigned, "assignedPerson"), document.author_family_name, document.author_given_name)
    b.organization(assigned, "representedOrganization", site.finess_geo, site.name)

    custodian = b.add(b.add(root, "custodian"), "assignedCustodian")
    b.organization(custodian, "representedCustodianOrganization", structure.finess_ej, structure.name)

    legal = b.add(root, "legalAuthenticator")
    b.add(legal, "time", value=timestamp(created))
    b.add(legal, "signatureCode", code="S")
    entity = b.add(legal, "assignedEntity")
    b.add(entity, "id", root=hl7.RPPS_AUTHORITY, extension="8" + legal_rpps)
    if header.legal_authenticator_is_author(document):
        b.person_name(b.add(entity, "assignedPerson"), document.author_family_name, document.author_given_name)

    event = b.add(b.add(root, "documentationOf"), "serviceEvent")
    b.interval(event, document.service_start, document.service_stop)
    performer = b.add(b.add(event, "performer", typeCode="PRF"), "assignedEntity")
    b.add(performer, "id", root=hl7.RPPS_AUTHORITY, extension="8" + document.author_rpps)
    organization = b.organization(performer, "representedOrganization", site.finess_geo, site.name)
    b.code(organization, "standardIndustryClassCode", setting)

    if replaces is not None:  # CDA R2 order: after documentationOf, before componentOf
        parent = b.add(b.add(root, "relatedDocument", typeCode="RPLC"), "parentDocument")
        b.add(parent, "id", root=replaces.unique_id)
        if replaces.version is not None:
            b.add(parent, "versionNumber", value=str(replaces.version))

    encounter = b.add(b.add(root, "componentOf"), "encompassingEncounter")
    b.interval(encounter, document.service_start, document.service_stop)
    facility_el = b.add(b.add(encounter, "location"), "healthCareFacility")
    b.add(facility_el, "id", root=hl7.FINESS_AUTHORITY, extension="1" + site.finess_geo)
    b.code(facility_el, "code", facility)

    body = b.add(b.add(root, "component"), "nonXMLBody")
    b.add(body, "text", mediaType="application/pdf", representation="B64", text=_BODY_MARK)
    # Written in canonical form, the base64 body spliced in as bytes: lxml need not check and copy
    # megabytes of text, and the signature digests the bytes without parsing them again. The body is
    # the document's last text, so the last mark is the body's whatever the header holds.
    before, _, after = etree.tostring(root, method="c14n").rpartition(_BODY_MARK.encode("ascii"))
    return (CanonicalDocument(b"".join((XML_DECLARATION, before, base64.b64encode(content), after))),
            etree.ElementTree(root))


_BODY_MARK = "@BODY@"


def timestamp(value: dt.datetime) -> str:
    """HL7 TS with seconds and offset in Europe/Paris time, e.g. 20261120143000+0100."""
    return _aware(value).astimezone(hl7.LOCAL_TZ).strftime("%Y%m%d%H%M%S%z")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=hl7.LOCAL_TZ)


def _replacement_problems(document: Document, unique_id: str, replaces: Replaces | None) -> list[str]:
    """Why this version cannot replace `replaces` (ids and versions only), else []."""
    if replaces is None:
        return []
    problems = []
    if replaces.unique_id == unique_id:
        problems.append("a version cannot replace itself (same uniqueId)")
    if replaces.version is not None and document.version <= replaces.version:
        problems.append(f"version {document.version} does not follow the replaced version {replaces.version}")
    if not replaces.entry_uuid.startswith("urn:uuid:"):
        problems.append("the replaced entry's entryUUID is not a urn:uuid")
    return problems


def _missing_fields(document: Document, patient: Patient, type_code, now) -> list[str]:
    """What the CDA needs and the store does not give (names of fields, never their values)."""
    problems = []
    if not patient.ins_matricule or patient.ins_oid not in INS_OIDS:
        problems.append("patient INS (ins_matricule / ins_oid) missing or not an INS OID")
    for field in ("birth_family_name", "birth_given_names", "birth_date", "birth_place_code"):
        value = getattr(patient, field)
        if not value or (isinstance(value, str) and not value.strip()):
            problems.append(f"patient {field} missing (INS trait)")
    if patient.sex not in GENDERS:
        problems.append("patient sex missing or not M/F/U (INS trait)")
    if type_code is None or not codes.is_type_code(type_code.code):
        problems.append("type_code missing or not a document type of JDV_J07")
    if not document.author_rpps:
        problems.append("author_rpps missing")
    if document.created_at is None and now is None:
        problems.append("created_at missing")
    if document.service_start is None:
        problems.append("service_start missing")
    elif document.service_stop is not None and _aware(document.service_stop) < _aware(document.service_start):
        problems.append("service_stop before service_start")
    if (document.mime_type or "application/pdf").lower() != "application/pdf":
        problems.append("mime_type is not application/pdf")
    return problems


class _Builder:
    """Small helpers over lxml for HL7 v3 elements in the default namespace."""

    def __init__(self):
        self.root = etree.Element(_V3 + "ClinicalDocument", nsmap={None: HL7, "xsi": XSI})

    def add(self, parent, tag: str, text: str | None = None, **attributes) -> etree._Element:
        element = etree.SubElement(parent, _V3 + tag, {k: v for k, v in attributes.items() if v is not None})
        if text is not None:
            element.text = text
        return element

    def code(self, parent, tag: str, code: codes.Code) -> etree._Element:
        return self.add(parent, tag, code=code.code, displayName=code.display, codeSystem=code.code_system)

    def person_name(self, person, family: str | None, given: str | None) -> None:
        name = self.add(person, "name")
        if not family and not given:
            name.set("nullFlavor", "UNK")
        if given:
            self.add(name, "given", text=given)
        if family:
            self.add(name, "family", text=family)

    def organization(self, parent, tag: str, finess: str, name: str) -> etree._Element:
        organization = self.add(parent, tag)
        self.add(organization, "id", root=hl7.FINESS_AUTHORITY, extension="1" + finess)
        self.add(organization, "name", text=name)
        return organization

    def interval(self, parent, low: dt.datetime, high: dt.datetime | None) -> None:
        time = self.add(parent, "effectiveTime")
        self.add(time, "low", value=timestamp(low))
        if high is not None and high != low:  # IVL_TS forbids high == low (dtr1-6): a point in time
            self.add(time, "high", value=timestamp(high))


# --- store documents that already are CDA -------------------------------------------------------

def check_passthrough_cda(content: bytes, document: Document, patient: Patient, site: Site,
                          unique_id: str | None = None, replaces: Replaces | None = None) -> bytes:
    """Return `content` unchanged if it is a CDA of this patient that does not contradict the store row (see
    `passthrough_cda`); with `unique_id`, its id must also give that uniqueId. Raises PayloadError(CDA_INVALID)."""
    found, _ = passthrough_cda(content, document, patient, site, replaces)
    if unique_id is not None and found != unique_id:
        raise PayloadError(CDA_INVALID, f"document {document.document_id}: the CDA's id must be root={unique_id} "
                                        "without extension (the uniqueId its XDS metadata gives it)")
    return content


def passthrough_cda(content: bytes, document: Document, patient: Patient, site: Site,
                    replaces: Replaces | None = None) -> tuple[str, bytes]:
    """(uniqueId, `content` unchanged) of a store document that already is a CDA, produced elsewhere (a DPI, a
    lab system: the HL7 v2 intake's documents). Its uniqueId is its own id (root, or root^extension), which
    the XDS metadata then carries: a CDA and its metadata have the same uniqueId.

    Parsed without entity expansion, DTD or network (a DOCTYPE, hence any XML bomb or XXE, is refused). What
    the CI-SIS leaves optional may be absent (the ANS XSD and schematron, run after, decide validity); only a
    contradiction with the store is refused: an INS or an identity trait (birth name, birth given names, birth
    date, sex) other than the store patient's, a healthCareFacility FINESS other than the site's (a CDA without
    one takes the store row's, i.e. PRT's FINESS géographique). With `replaces`, it must be a replacement of
    that version (one relatedDocument RPLC whose parentDocument id is its uniqueId, a higher versionNumber).
    Raises PayloadError(CDA_INVALID) naming the document and the mismatch (never the values)."""
    doc_id = document.document_id
    try:
        root = parse_untrusted(content).getroot()
    except ValueError as exc:
        raise PayloadError(CDA_INVALID, f"document {doc_id}: {exc}") from None
    if root.tag != _V3 + "ClinicalDocument":
        raise PayloadError(CDA_INVALID, f"document {doc_id}: root element is not an HL7 v3 ClinicalDocument")
    ns = {"v3": HL7}
    patient_ids = root.xpath("v3:recordTarget/v3:patientRole/v3:id", namespaces=ns)
    ins = [(i.get("root"), i.get("extension")) for i in patient_ids if i.get("root") in INS_OIDS]
    if ins != [(patient.ins_oid, patient.ins_matricule)]:
        raise PayloadError(CDA_INVALID, f"document {doc_id}: the CDA's INS does not match the store patient's")
    unique_id = _own_unique_id(root, doc_id)
    trait = _identity_mismatch(root, patient)
    if trait:
        raise PayloadError(CDA_INVALID, f"document {doc_id}: the CDA's {trait} does not match the store patient's")
    facilities = root.xpath(
        "v3:componentOf/v3:encompassingEncounter/v3:location/v3:healthCareFacility/v3:id", namespaces=ns
    )
    finess = [f.get("extension") for f in facilities if f.get("root") == hl7.FINESS_AUTHORITY]
    if finess and "1" + site.finess_geo not in finess:
        raise PayloadError(
            CDA_INVALID, f"document {doc_id}: the CDA's healthCareFacility FINESS is not the site's "
                         f"{site.finess_geo} (the store row's finess_geo)"
        )
    if replaces is not None and (problem := _passthrough_replacement_problem(root, unique_id, replaces)):
        raise PayloadError(CDA_INVALID, f"document {doc_id}: {problem}")
    return unique_id, content


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
UNIQUE_ID_MAX = 64  # XDS uniqueId as the ledger keeps it (an OID is at most 64 characters)


def _own_unique_id(root, doc_id: str) -> str:
    """The XDS uniqueId a CDA's own id gives: its root (an OID), `^` and its extension if it has one."""
    ids_ = root.findall(_V3 + "id")
    if len(ids_) != 1 or not _OID.match(ids_[0].get("root") or ""):
        raise PayloadError(CDA_INVALID, f"document {doc_id}: the CDA must have one id whose root is an OID "
                                        "(its uniqueId)")
    root_oid, extension = ids_[0].get("root"), ids_[0].get("extension")
    unique_id = root_oid if not extension else f"{root_oid}^{extension}"
    if len(unique_id) > UNIQUE_ID_MAX or (extension is not None and not extension.strip()) or \
            any(c.isspace() for c in unique_id):
        raise PayloadError(CDA_INVALID, f"document {doc_id}: the CDA's id does not give a uniqueId of at most "
                                        f"{UNIQUE_ID_MAX} characters without spaces (root, or root^extension)")
    return unique_id


def _passthrough_replacement_problem(root, unique_id: str, replaces: Replaces) -> str | None:
    """What a store CDA lacks to be the replacement of `replaces`, else None."""
    ns = {"v3": HL7}
    parents = root.xpath("v3:relatedDocument[@typeCode='RPLC']/v3:parentDocument/v3:id", namespaces=ns)
    if [(p.get("root"), p.get("extension")) for p in parents] != [(replaces.unique_id, None)]:
        return (f"the CDA must carry one relatedDocument typeCode=RPLC whose parentDocument id is root="
                f"{replaces.unique_id} (the replaced version's uniqueId)")
    version = root.find(f"{_V3}versionNumber")
    value = version.get("value") if version is not None else None
    if replaces.version is not None and not (value and value.isdigit() and int(value) > replaces.version):
        return f"the CDA's versionNumber must be above the replaced version {replaces.version}"
    if replaces.unique_id == unique_id:
        return "a version cannot replace itself (same uniqueId)"
    return None


def _identity_mismatch(root, patient: Patient) -> str | None:
    """The first INS identity trait of the CDA's patient that differs from the store's (whitespace aside)."""
    ns = {"v3": HL7}
    person = root.find("v3:recordTarget/v3:patientRole/v3:patient", namespaces=ns)
    if person is None:
        return "patient"

    def texts(xpath: str) -> list[str]:
        return [" ".join("".join(e.itertext()).split()) for e in person.xpath(xpath, namespaces=ns)]

    given = " ".join(patient.given_names)
    if texts("v3:name/v3:family[@qualifier='BR']") != [" ".join((patient.birth_family_name or "").split())]:
        return "birth name"
    if given not in texts("v3:name/v3:given[not(@qualifier)]"):
        return "birth given names"
    first = texts("v3:name/v3:given[@qualifier='BR']")
    if first and first != patient.given_names[:1]:
        return "first birth given name"
    birth = person.find("v3:birthTime", namespaces=ns)
    if patient.birth_date is None or birth is None or (birth.get("value") or "")[:8] != patient.birth_date.strftime("%Y%m%d"):
        return "birth date"
    sex = person.find("v3:administrativeGenderCode", namespaces=ns)
    if sex is None or sex.get("code") != GENDERS.get(patient.sex, (None,))[0]:
        return "sex"
    return None
