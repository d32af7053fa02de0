"""Every XDS DocumentEntry value that has a CDA counterpart says what the CDA says: both are built by the
product's builders (cda.build_cda, prepare.submission) from many different store rows, then read back
independently (XPath on the CDA, ebRIM on the request) and compared field by field."""

from __future__ import annotations

import datetime as dt
import string

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from lxml import etree

from connector import prepare
from connector.payload import cda, codes, hl7, ids, xds
from conftest import make_document, make_patient, make_settings

V3 = {"v3": "urn:hl7-org:v3"}
R = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
PDF = b"%PDF-1.4\n% fictitious test content\n%%EOF\n"
SUBMISSION_TIME = dt.datetime(2026, 11, 21, 2, 5, 7, tzinfo=dt.timezone.utc)

NAME_CHARS = string.ascii_uppercase + "ÉÈÇÀéèçà'-^&|~\\" + "abcdefghijklmnopqrstuvwxyz"
name_word = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12)
# document types of J07 that ASS_X16 maps to a classCode (the others are refused or need a fallback setting)
J07_DOCUMENT_TYPES = sorted(c for c in codes.value_set(codes.TYPE_CODES)
                            if codes.is_type_code(c) and codes.dmp_class_code(c) is not None)
local_times = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2035, 12, 31))
RPPS = st.from_regex(r"1[0-9]{10}", fullmatch=True)


@st.composite
def store_rows(draw):
    """A patient and one to three of their documents, as varied as the store contract allows."""
    given_names = draw(st.lists(name_word, min_size=1, max_size=3))
    patient = make_patient(
        ins_oid=draw(st.sampled_from(sorted(cda.INS_OIDS))),
        ins_matricule=draw(st.from_regex(r"[12][0-9]{14}", fullmatch=True)),
        patient_id=draw(st.from_regex(r"[A-Z0-9]{1,20}", fullmatch=True)),
        birth_family_name=draw(name_word),
        birth_given_names=" ".join(given_names),
        sex=draw(st.sampled_from("MFU")),
        birth_date=draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2026, 12, 31))),
    )
    documents = []
    for n in range(draw(st.integers(1, 3))):
        start = draw(local_times)
        author = draw(RPPS)
        documents.append(make_document(
            document_id=f"D{n}-" + draw(st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)),
            patient_id=patient.patient_id,
            version=draw(st.integers(min_value=1, max_value=10**6)),
            type_code=draw(st.sampled_from(J07_DOCUMENT_TYPES)),
            title=draw(st.none() | st.just("  ") | st.text(alphabet=NAME_CHARS + " <>\"", min_size=1, max_size=60)),
            service_start=start,
            service_stop=draw(st.none() | st.just(start) | st.just(start + dt.timedelta(hours=draw(st.integers(1, 2000))))),
            created_at=start + dt.timedelta(minutes=draw(st.integers(0, 10**6))),
            author_rpps=author,
            author_family_name=draw(name_word),
            author_given_name=draw(st.none() | name_word),
            author_specialty_code=draw(st.sampled_from(["G15_10/SM26", "G15_10/SM03", "10", "NOT-J01", None])),
            legal_authenticator_rpps=draw(st.sampled_from([None, author]) | RPPS),
            mask_professionals=draw(st.booleans()),
        ))
    return patient, documents


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("agreement"))


def build(settings, sign_credential, patient, documents):
    """The CDAs and the signed, self-checked ITI-41 request of one submission set, as a run makes them."""
    structure, site = settings.structure, settings.structure.sites[0]
    built = []
    for d in documents:
        uid = ids.document_unique_id(structure.oid_root, d.document_id, d.version)
        built.append((d, uid, cda.build_cda(d, patient, site, structure, PDF, unique_id=uid)))
    keys = [(d.document_id, d.version) for d in documents]
    prepared = prepare.submission(
        settings, sign_credential, site=site, patient=patient, documents=built,
        submission_set_uid=ids.submission_set_unique_id(structure.oid_root, keys),
        submission_set_entry_uuid=ids.submission_set_entry_uuid(structure.oid_root, keys),
        submission_time=SUBMISSION_TIME,
    )
    return built, prepared


# --- reading both sides -----------------------------------------------------------------------------


def one(tree, path: str):
    found = tree.xpath(path, namespaces=V3)
    if isinstance(found, str):  # string(...)
        return found
    assert len(found) <= 1, path
    return found[0] if found else None


def slot(owner, name) -> list[str]:
    return [v.text for s in owner.findall(f"{R}Slot[@name='{name}']") for v in s.iter(f"{R}Value")]


def classified(owner, scheme) -> list[tuple[str, str, str]]:
    return [
        (c.get("nodeRepresentation"), slot(c, "codingScheme")[0], c.find(f"{R}Name/{R}LocalizedString").get("value"))
        for c in owner.findall(f"{R}Classification[@classificationScheme='{scheme}']")
    ]


def external_id(owner, scheme) -> str:
    return owner.find(f"{R}ExternalIdentifier[@identificationScheme='{scheme}']").get("value")


def author(owner) -> dict[str, list[str]]:
    (node,) = owner.findall(f"{R}Classification[@classificationScheme='{xds.DE_AUTHOR}']")
    return {s.get("name"): [v.text for v in s.iter(f"{R}Value")] for s in node.findall(f"{R}Slot")}


def utc(hl7_ts: str | None) -> str | None:
    """A CDA TS with offset (YYYYMMDDhhmmss+zzzz) as the UTC DTM of XDS."""
    if hl7_ts is None:
        return None
    return hl7.dtm(dt.datetime.strptime(hl7_ts, "%Y%m%d%H%M%S%z"))


def xcn(value: str) -> tuple[str, str, str, str]:
    """(id, family, given, assigning authority OID) of an XCN."""
    parts = value.split("^")
    return hl7.unescape(parts[0]), hl7.unescape(parts[1]), hl7.unescape(parts[2]), parts[8].split("&")[1]


def person(entity) -> tuple[str, str, str, str]:
    """(id, family, given, root) of a CDA assignedAuthor / assignedEntity."""
    ident = one(entity, "v3:id")
    return (ident.get("extension"), one(entity, "string(v3:assignedPerson/v3:name/v3:family)"),
            one(entity, "string(v3:assignedPerson/v3:name/v3:given)"), ident.get("root"))


def assert_entry_says_what_the_cda_says(entry, xml: bytes, structure, patient) -> None:
    doc = etree.fromstring(xml)
    # identifiers
    assert external_id(entry, xds.DE_UNIQUE_ID) == one(doc, "v3:id/@root")
    ins_id = one(doc, f"v3:recordTarget/v3:patientRole/v3:id[@root='{patient.ins_oid}']")
    assert hl7.parse_cx(external_id(entry, xds.DE_PATIENT_ID)) == (ins_id.get("extension"), ins_id.get("root"), "NH")
    ipp = one(doc, f"v3:recordTarget/v3:patientRole/v3:id[@root='{ids.ipp_authority(structure.oid_root)}']")
    assert [hl7.parse_cx(v) for v in slot(entry, "sourcePatientId")] == [(ipp.get("extension"), ipp.get("root"), "PI")]
    # sourcePatientInfo: birth name and first birth given name, birth date, sex
    info = dict(v.split("|", 1) for v in slot(entry, "sourcePatientInfo"))
    family, given = info["PID-5"].split("^")[:2]
    name = "v3:recordTarget/v3:patientRole/v3:patient/v3:name"
    assert hl7.unescape(family) == one(doc, f"string({name}/v3:family[@qualifier='BR'])")
    assert hl7.unescape(given) == one(doc, f"string({name}/v3:given[@qualifier='BR'])")
    assert info["PID-7"] == one(doc, "string(v3:recordTarget/v3:patientRole/v3:patient/v3:birthTime/@value)")
    gender = one(doc, "string(v3:recordTarget/v3:patientRole/v3:patient/v3:administrativeGenderCode/@code)")
    assert cda.GENDERS[info["PID-8"]][0] == gender  # HL7 v2 table 0001 U = HL7 v3 UN
    # author person, institution, specialty
    slots = author(entry)
    assigned = one(doc, "v3:author/v3:assignedAuthor")
    assert [xcn(v) for v in slots["authorPerson"]] == [person(assigned)]
    (institution,) = slots["authorInstitution"]
    parts = institution.split("^")
    organization = one(assigned, "v3:representedOrganization")
    assert hl7.unescape(parts[0]) == one(organization, "string(v3:name)")
    assert (parts[9], parts[5].split("&")[1]) == (one(organization, "string(v3:id/@extension)"),
                                                  one(organization, "string(v3:id/@root)"))
    specialty = one(assigned, "v3:code")
    if specialty is None:
        assert "authorSpecialty" not in slots
    else:
        assert slots["authorSpecialty"] == [hl7.ce(specialty.get("code"), specialty.get("displayName"),
                                                   specialty.get("codeSystem"))]
    # legal authenticator (the CDA's defaults to the author)
    legal = one(doc, "v3:legalAuthenticator/v3:assignedEntity")
    assert [xcn(v) for v in slot(entry, "legalAuthenticator")] == [person(legal)]
    # codes
    code = one(doc, "v3:code")
    assert classified(entry, xds.DE_TYPE_CODE) == [(code.get("code"), code.get("codeSystem"), code.get("displayName"))]
    class_code = codes.dmp_class_code(code.get("code"))  # the CDA has no classCode: ASS_X16 of its type
    assert classified(entry, xds.DE_CLASS_CODE) == [(class_code.code, class_code.code_system, class_code.display)]
    confidentiality = one(doc, "v3:confidentialityCode")
    assert classified(entry, xds.DE_CONFIDENTIALITY)[0] == (
        confidentiality.get("code"), confidentiality.get("codeSystem"), confidentiality.get("displayName"))
    facility = one(doc, "v3:componentOf/v3:encompassingEncounter/v3:location/v3:healthCareFacility/v3:code")
    assert classified(entry, xds.DE_FACILITY_TYPE) == [
        (facility.get("code"), facility.get("codeSystem"), facility.get("displayName"))]
    setting = one(doc, "v3:documentationOf/v3:serviceEvent/v3:performer/v3:assignedEntity"
                       "/v3:representedOrganization/v3:standardIndustryClassCode")
    assert classified(entry, xds.DE_PRACTICE_SETTING) == [
        (setting.get("code"), setting.get("codeSystem"), setting.get("displayName"))]
    event = one(doc, "v3:documentationOf/v3:serviceEvent/v3:code")
    expected_events = [] if event is None else [(event.get("code"), event.get("codeSystem"), event.get("displayName"))]
    assert classified(entry, xds.DE_EVENT_CODE) == expected_events
    assert one(doc, "string(v3:component/v3:nonXMLBody/v3:text/@mediaType)") == "application/pdf"
    assert [c[0] for c in classified(entry, xds.DE_FORMAT_CODE)] == [xds.FORMAT_PDF.code]
    # language, title, times
    assert slot(entry, "languageCode") == [one(doc, "string(v3:languageCode/@code)")]
    assert entry.find(f"{R}Name/{R}LocalizedString").get("value") == one(doc, "string(v3:title)")
    assert slot(entry, "creationTime") == [utc(one(doc, "string(v3:effectiveTime/@value)"))]
    low = utc(one(doc, "v3:documentationOf/v3:serviceEvent/v3:effectiveTime/v3:low/@value"))
    high = utc(one(doc, "v3:documentationOf/v3:serviceEvent/v3:effectiveTime/v3:high/@value"))
    assert slot(entry, "serviceStartTime") == [low]
    # the CDA writes no high for a point in time (IVL_TS dtr1-6); the entry may repeat the start as its stop
    assert slot(entry, "serviceStopTime") in ([[high]] if high else [[], [low]])


@hyp_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(store_rows())
def test_every_document_entry_says_what_its_cda_says(settings, sign_credential, rows):
    patient, documents = rows
    built, prepared = build(settings, sign_credential, patient, documents)
    for document, uid, xml in built:
        entry_uuid = ids.entry_uuid(settings.structure.oid_root, document.document_id, document.version)
        entry = prepared.request.find(f".//{R}ExtrinsicObject[@id='{entry_uuid}']")
        assert prepared.attachments[entry_uuid] == xml
        assert_entry_says_what_the_cda_says(entry, xml, settings.structure, patient)


@hyp_settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(store_rows())
def test_the_signature_entry_has_the_submission_set_authors_legal_authenticator(settings, sign_credential, rows):
    patient, documents = rows
    built, prepared = build(settings, sign_credential, patient, documents)
    signature_uuid = ids.signature_entry_uuid(settings.structure.oid_root, prepared.submission_set_uid)
    entry = prepared.request.find(f".//{R}ExtrinsicObject[@id='{signature_uuid}']")
    first_cda = etree.fromstring(built[0][2])
    legal = one(first_cda, "v3:legalAuthenticator/v3:assignedEntity")
    assert [xcn(v) for v in slot(entry, "legalAuthenticator")] == [person(legal)]
    first = one(first_cda, "v3:author/v3:assignedAuthor")
    assert [xcn(v) for v in author(entry)["authorPerson"]] == [person(first)]
