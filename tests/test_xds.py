"""XDS.b ProvideAndRegisterDocumentSetRequest: schema validity, DMP metadata, determinism, checks."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib

import pytest
from lxml import etree

from connector.payload import hl7, ids, validate, xds
from connector.payload.errors import PayloadError
from connector.payload.xds_read import metadata_errors, parse_request
from connector.trust.xmlsig import XML_DECLARATION, CanonicalDocument
from conftest import make_document, make_patient, make_settings

R = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
SUBMISSION_TIME = dt.datetime(2026, 11, 21, 2, 5, 7, tzinfo=dt.timezone.utc)
SIGNING_TIME = dt.datetime(2026, 11, 21, 2, 5, 6, tzinfo=dt.timezone.utc)


def schema_errors(element) -> list[str]:
    return validate.xds_request_errors(element)


def build(tmp_path, n=1, *, patient=None, documents=None, signed=True, settings=None, cda=None, **doc_overrides):
    settings = settings or make_settings(tmp_path)
    structure = settings.structure
    site = structure.sites[0]
    patient = patient or make_patient()
    documents = documents or [
        make_document(document_id=f"DOC{i:04d}", title=f"Lettre {i}", **doc_overrides) for i in range(1, n + 1)
    ]
    entries = [
        xds.Entry(
            document=d,
            patient=patient,
            cda=cda or f"<ClinicalDocument>{d.document_id}</ClinicalDocument>".encode(),
            unique_id=ids.document_unique_id(structure.oid_root, d.document_id, d.version),
            entry_uuid=ids.entry_uuid(structure.oid_root, d.document_id, d.version),
        )
        for d in documents
    ]
    keys = [d.key for d in documents]
    ss_uid = ids.submission_set_unique_id(structure.oid_root, keys)
    signature = (
        xds.SignatureEntry(
            xml=b"<ds:Signature xmlns:ds='http://www.w3.org/2000/09/xmldsig#'/>",
            unique_id=ids.signature_unique_id(structure.oid_root, ss_uid),
            entry_uuid=ids.signature_entry_uuid(structure.oid_root, ss_uid),
            signing_time=SIGNING_TIME,
        )
        if signed
        else None
    )
    element, attachments = xds.build_provide_and_register(
        structure=structure,
        site=site,
        patient=patient,
        entries=entries,
        submission=settings.submission,
        submission_set_uid=ss_uid,
        submission_set_entry_uuid=ids.submission_set_entry_uuid(structure.oid_root, keys),
        submission_time=SUBMISSION_TIME,
        signature=signature,
    )
    return element, attachments, entries, signature


def extrinsic(element, entry_uuid):
    return element.find(f".//{R}ExtrinsicObject[@id='{entry_uuid}']")


def slot(owner, name) -> list[str]:
    return [v.text for s in owner.findall(f"{R}Slot[@name='{name}']") for v in s.iter(f"{R}Value")]


def codes(owner, scheme) -> list[tuple[str, str, str]]:
    return [
        (c.get("nodeRepresentation"), slot(c, "codingScheme")[0], c.find(f"{R}Name/{R}LocalizedString").get("value"))
        for c in owner.findall(f"{R}Classification[@classificationScheme='{scheme}']")
    ]


def external_id(owner, scheme) -> str:
    return owner.find(f"{R}ExternalIdentifier[@identificationScheme='{scheme}']").get("value")


def author_slots(owner, scheme) -> dict[str, list[str]]:
    (author,) = owner.findall(f"{R}Classification[@classificationScheme='{scheme}']")
    return {s.get("name"): [v.text for v in s.iter(f"{R}Value")] for s in author.findall(f"{R}Slot")}


# --- validity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_request_is_schema_valid_and_passes_metadata_checks(tmp_path, n):
    element, attachments, entries, signature = build(tmp_path, n)
    assert schema_errors(element) == []
    assert metadata_errors(element, attachments, require_signature=True) == []
    docs = element.findall("{urn:ihe:iti:xds-b:2007}Document")
    assert [d.get("id") for d in docs] == [e.entry_uuid for e in entries] + [signature.entry_uuid]
    assert all(len(d) == 0 and not d.text for d in docs)  # the transport adds xop:Include
    assert attachments == {**{e.entry_uuid: e.cda for e in entries}, signature.entry_uuid: signature.xml}


def test_unsigned_request_is_valid_but_flagged_when_a_signature_is_required(tmp_path):
    element, attachments, _, _ = build(tmp_path, 2, signed=False)
    assert schema_errors(element) == []
    assert metadata_errors(element, attachments) == []
    assert metadata_errors(element, attachments, require_signature=True) == ["no submission-set signature document"]


# --- metadata values ----------------------------------------------------------------------------


def test_document_entry_metadata(tmp_path):
    element, attachments, (entry,), _ = build(tmp_path)
    eo = extrinsic(element, entry.entry_uuid)
    assert eo.get("mimeType") == "text/xml" and eo.get("objectType") == xds.DOCUMENT_ENTRY
    # Store times are Paris wall-clock time; XDS wants UTC.
    assert slot(eo, "creationTime") == ["20261120133000"]
    assert slot(eo, "serviceStartTime") == ["20261115080000"]
    assert slot(eo, "serviceStopTime") == ["20261120110000"]
    assert slot(eo, "languageCode") == ["fr-FR"]
    assert slot(eo, "hash") == [hashlib.sha1(entry.cda).hexdigest()]
    assert slot(eo, "size") == [str(len(entry.cda))]
    assert slot(eo, "sourcePatientId") == ["IPP0001^^^&1.2.250.1.999.42.3&ISO^PI"]
    assert slot(eo, "sourcePatientInfo") == ["PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790312", "PID-8|F"]
    assert slot(eo, "legalAuthenticator") == ["810001234567^MARTIN^Claire^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"]
    assert eo.find(f"{R}Name/{R}LocalizedString").get("value") == "Lettre 1"
    assert author_slots(eo, xds.DE_AUTHOR) == {
        "authorPerson": ["810001234567^MARTIN^Claire^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"],
        "authorInstitution": ["Hôpital Sainte-Anne-d'Auray (site test)^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^10B0999998"],
        "authorSpecialty": ["G15_10/SM26^Médecin - Qualifié en Médecine Générale (SM)^1.2.250.1.213.1.1.4.5"],
    }
    assert codes(eo, xds.DE_CLASS_CODE) == [("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")]
    assert codes(eo, xds.DE_CONFIDENTIALITY) == [("N", "2.16.840.1.113883.5.25", "Normal")]
    assert codes(eo, xds.DE_FORMAT_CODE) == [
        ("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré en Pdf/A-1")
    ]
    # displays come from the CI-SIS value sets (J02, J04, J07)
    assert codes(eo, xds.DE_FACILITY_TYPE) == [("SA01", "1.2.250.1.71.4.2.4", "Etablissement public de santé")]
    assert codes(eo, xds.DE_PRACTICE_SETTING) == [("ETABLISSEMENT", "1.2.250.1.213.1.1.4.9", "Etablissement de santé")]
    assert codes(eo, xds.DE_TYPE_CODE) == [
        ("11490-0", "2.16.840.1.113883.6.1", "Lettre de liaison à la sortie d'un établissement de soins")
    ]
    assert codes(eo, xds.DE_EVENT_CODE) == []
    assert external_id(eo, xds.DE_PATIENT_ID) == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert external_id(eo, xds.DE_UNIQUE_ID) == entry.unique_id


def test_submission_set_metadata(tmp_path):
    element, _, entries, signature = build(tmp_path, 3)
    (package,) = element.iter(f"{R}RegistryPackage")
    ss = package.get("id")
    assert ss == ids.submission_set_entry_uuid("1.2.250.1.999.42", [e.document.key for e in entries])
    assert slot(package, "submissionTime") == ["20261121020507"]
    assert author_slots(package, xds.SS_AUTHOR)["authorPerson"] == [
        "810001234567^MARTIN^Claire^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    ]
    # no activity in the store: submission.default_activity, 97 (JDV_J59, TRE_R209)
    assert codes(package, xds.SS_CONTENT_TYPE) == [("97", "1.2.250.1.213.2.2", "Type d'activité indifférencié")]
    assert external_id(package, xds.SS_PATIENT_ID) == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert external_id(package, xds.SS_SOURCE_ID) == "1.2.250.1.999.42"
    assert external_id(package, xds.SS_UNIQUE_ID) == ids.submission_set_unique_id(
        "1.2.250.1.999.42", [e.document.key for e in entries]
    )
    node = element.findall(f".//{R}Classification[@classificationNode='{xds.SUBMISSION_SET}']")
    assert [n.get("classifiedObject") for n in node] == [ss]
    members = {
        a.get("targetObject")
        for a in element.iter(f"{R}Association")
        if a.get("associationType") == xds.HAS_MEMBER
        and a.get("sourceObject") == ss
        and slot(a, "SubmissionSetStatus") == ["Original"]
    }
    assert members == {e.entry_uuid for e in entries} | {signature.entry_uuid}
    (signs,) = [a for a in element.iter(f"{R}Association") if a.get("associationType") == xds.SIGNS]
    assert (signs.get("sourceObject"), signs.get("targetObject")) == (signature.entry_uuid, ss)


def test_signature_entry_metadata(tmp_path):
    element, attachments, _, signature = build(tmp_path, 2)
    eo = extrinsic(element, signature.entry_uuid)
    assert codes(eo, xds.DE_CLASS_CODE) == [("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")]
    assert codes(eo, xds.DE_TYPE_CODE) == [("E1762", "ASTM", "Full Document")]
    assert codes(eo, xds.DE_FORMAT_CODE) == [("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")]
    assert codes(eo, xds.DE_EVENT_CODE) == [("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")]
    assert [c[0] for c in codes(eo, xds.DE_CONFIDENTIALITY)] == ["N", "INVISIBLE_PATIENT", "MASQUE_PS"]
    assert eo.find(f"{R}Name/{R}LocalizedString").get("value") == "Source"
    assert slot(eo, "languageCode") == ["art"]
    for name in ("creationTime", "serviceStartTime", "serviceStopTime"):
        assert slot(eo, name) == ["20261121020506"]
    assert slot(eo, "hash") == [hashlib.sha1(signature.xml).hexdigest()]
    assert slot(eo, "legalAuthenticator") == author_slots(eo, xds.DE_AUTHOR)["authorPerson"]
    assert external_id(eo, xds.DE_UNIQUE_ID) == signature.unique_id
    assert codes(eo, xds.DE_FACILITY_TYPE)[0][0] == "SA01"
    # as the GIE's TD2.1: the submission set's author with its specialty, the INS as sourcePatientId
    (package,) = element.iter(f"{R}RegistryPackage")
    assert author_slots(eo, xds.DE_AUTHOR) == author_slots(package, xds.SS_AUTHOR)
    assert author_slots(eo, xds.DE_AUTHOR)["authorSpecialty"] == [
        "G15_10/SM26^Médecin - Qualifié en Médecine Générale (SM)^1.2.250.1.213.1.1.4.5"
    ]
    assert slot(eo, "sourcePatientId") == [external_id(eo, xds.DE_PATIENT_ID)]


@pytest.mark.parametrize("legal, expected", [
    (None, "810001234567^MARTIN^Claire^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"),  # the author, as the CDA's
    ("10009876543", "810009876543^^^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"),
])
def test_every_entry_has_the_cdas_legal_authenticator(tmp_path, legal, expected):
    element, _, (entry,), signature = build(tmp_path, legal_authenticator_rpps=legal)
    assert slot(extrinsic(element, entry.entry_uuid), "legalAuthenticator") == [expected]
    assert slot(extrinsic(element, signature.entry_uuid), "legalAuthenticator") == [expected]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({}, ["N"]),
        ({"mask_professionals": True}, ["N", "MASQUE_PS"]),
        ({"invisible_to_patient": True}, ["N", "INVISIBLE_PATIENT"]),
        ({"invisible_to_legal_representatives": True}, ["N", "INVISIBLE_REPRESENTANTS_LEGAUX"]),
        (
            {"mask_professionals": True, "invisible_to_patient": True, "invisible_to_legal_representatives": True},
            ["N", "MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"],
        ),
    ],
)
def test_masking_codes_follow_the_store_flags(tmp_path, flags, expected):
    element, attachments, (entry,), _ = build(tmp_path, **flags)
    found = codes(extrinsic(element, entry.entry_uuid), xds.DE_CONFIDENTIALITY)
    assert [c[0] for c in found] == expected
    assert all(scheme == "1.2.250.1.213.1.1.4.13" for code, scheme, _ in found if code != "N")
    assert schema_errors(element) == [] and metadata_errors(element, attachments) == []


def test_finess_geo_is_identical_everywhere(tmp_path):
    element, _, _, _ = build(tmp_path, 3)
    institutions = [
        v.text for s in element.iter(f"{R}Slot") if s.get("name") == "authorInstitution" for v in s.iter(f"{R}Value")
    ]
    assert len(institutions) == 1 + 3 + 1  # submission set, documents, signature
    assert {hl7.xon_finess(i) for i in institutions} == {"0B0999998"}


def test_passthrough_cda_gets_the_default_format_code(tmp_path):
    element, attachments, (entry,), _ = build(tmp_path, mime_type="text/xml")
    assert codes(extrinsic(element, entry.entry_uuid), xds.DE_FORMAT_CODE)[0][0] == xds.FORMAT_PASSTHROUGH.code
    assert metadata_errors(element, attachments) == []


def test_accents_and_apostrophes_survive(tmp_path):
    patient = make_patient(birth_family_name="D'ARTAGNAN", birth_given_names="Zoé Anaïs", used_family_name="D'ARTAGNAN")
    doc = make_document(author_family_name="D'ARTAGNAN", author_given_name="Zoé", title="Compte rendu d'hôpital")
    element, attachments, (entry,), _ = build(tmp_path, patient=patient, documents=[doc])
    reparsed = etree.fromstring(etree.tostring(element, encoding="UTF-8"))
    eo = extrinsic(reparsed, entry.entry_uuid)
    assert slot(eo, "sourcePatientInfo")[0] == "PID-5|D'ARTAGNAN^Zoé^^^^^L"
    assert author_slots(eo, xds.DE_AUTHOR)["authorPerson"][0].startswith("810001234567^D'ARTAGNAN^Zoé^")
    assert eo.find(f"{R}Name/{R}LocalizedString").get("value") == "Compte rendu d'hôpital"
    assert schema_errors(reparsed) == [] and metadata_errors(reparsed, attachments) == []


def test_hl7_delimiters_in_names_are_escaped(tmp_path):
    doc = make_document(author_family_name="A^B&C", author_given_name="D|E")
    element, _, (entry,), _ = build(tmp_path, documents=[doc])
    person = author_slots(extrinsic(element, entry.entry_uuid), xds.DE_AUTHOR)["authorPerson"][0]
    assert person.startswith(r"810001234567^A\S\B\T\C^D\F\E^")
    assert len(person.split("^")) == 13


# --- determinism ----------------------------------------------------------------------------------


def test_same_inputs_build_the_same_bytes(tmp_path):
    a, att_a, _, _ = build(tmp_path, 3)
    b, att_b, _, _ = build(tmp_path, 3)
    assert etree.tostring(a) == etree.tostring(b)
    assert att_a == att_b
    # every metadata object has its own id
    all_ids = [el.get("id") for el in a.iter() if el.get("id") and el.tag.startswith(R)]
    assert len(all_ids) == len(set(all_ids))
    assert all(i.startswith("urn:uuid:") for i in all_ids)


def test_document_order_does_not_change_the_submission_set_ids(tmp_path):
    docs = [make_document(document_id=f"DOC{i}") for i in range(3)]
    a, _, _, _ = build(tmp_path, documents=docs)
    b, _, _, _ = build(tmp_path, documents=list(reversed(docs)))
    assert parse_request(a).submission_set_uid == parse_request(b).submission_set_uid
    assert parse_request(a).submission_set_entry_uuid == parse_request(b).submission_set_entry_uuid


# --- metadata_errors ------------------------------------------------------------------------------


def test_missing_patient_id_is_reported(tmp_path):
    element, attachments, (entry,), _ = build(tmp_path)
    eo = extrinsic(element, entry.entry_uuid)
    eo.remove(eo.find(f"{R}ExternalIdentifier[@identificationScheme='{xds.DE_PATIENT_ID}']"))
    assert metadata_errors(element, attachments) == [f"DocumentEntry {entry.entry_uuid}: patientId missing"]
    package = element.find(f".//{R}RegistryPackage")
    package.remove(package.find(f"{R}ExternalIdentifier[@identificationScheme='{xds.SS_PATIENT_ID}']"))
    assert "SubmissionSet: patientId missing" in metadata_errors(element, attachments)


def test_wrong_hash_and_size_are_reported(tmp_path):
    element, attachments, (entry,), _ = build(tmp_path)
    tampered = {**attachments, entry.entry_uuid: entry.cda + b" "}
    assert metadata_errors(element, tampered) == [
        f"DocumentEntry {entry.entry_uuid}: hash does not match the attached document",
        f"DocumentEntry {entry.entry_uuid}: size does not match the attached document",
    ]
    missing = {k: v for k, v in attachments.items() if k != entry.entry_uuid}
    assert metadata_errors(element, missing) == [f"DocumentEntry {entry.entry_uuid}: no attached document"]


def test_a_built_cda_is_hashed_once_and_a_different_attachment_still_caught(tmp_path, monkeypatch):
    """The CDA builder's bytes (CanonicalDocument) keep their SHA-1 for the request's self-check; an attachment
    that is not the hashed object (one byte changed, same size) is hashed afresh: the mismatch is still caught."""
    cda = CanonicalDocument(XML_DECLARATION + b"<ClinicalDocument>DOC0001</ClinicalDocument>")
    element, attachments, (entry,), _ = build(tmp_path, cda=cda)
    assert parse_request(element).entries[0].hash == hashlib.sha1(cda).hexdigest()
    sha1 = hashlib.sha1
    hashed = []
    monkeypatch.setattr(hashlib, "sha1", lambda data: hashed.append(bytes(data)) or sha1(data))
    assert metadata_errors(element, attachments) == []
    assert bytes(cda) not in hashed  # the self-check did not hash the CDA again
    tampered = CanonicalDocument(cda.replace(b"DOC0001", b"DOC0002"))
    assert metadata_errors(element, {**attachments, entry.entry_uuid: tampered}) == [
        f"DocumentEntry {entry.entry_uuid}: hash does not match the attached document"]


def test_inconsistent_finess_is_reported(tmp_path):
    element, attachments, entries, _ = build(tmp_path, 2)
    eo = extrinsic(element, entries[1].entry_uuid)
    (value,) = [
        v for s in eo.iter(f"{R}Slot") if s.get("name") == "authorInstitution" for v in s.iter(f"{R}Value")
    ]
    value.text = value.text.replace("^10B0999998", "^10B0999997")
    errors = metadata_errors(element, attachments)
    assert errors == ["authorInstitution: FINESS géographique not identical everywhere (0B0999997, 0B0999998)"]


@pytest.mark.parametrize(
    "scheme, label",
    [
        (xds.DE_CLASS_CODE, "classCode"),
        (xds.DE_TYPE_CODE, "typeCode"),
        (xds.DE_FORMAT_CODE, "formatCode"),
        (xds.DE_CONFIDENTIALITY, "confidentialityCode"),
        (xds.DE_FACILITY_TYPE, "healthcareFacilityTypeCode"),
        (xds.DE_PRACTICE_SETTING, "practiceSettingCode"),
    ],
)
def test_missing_codes_are_reported(tmp_path, scheme, label):
    element, attachments, (entry,), _ = build(tmp_path)
    eo = extrinsic(element, entry.entry_uuid)
    for c in eo.findall(f"{R}Classification[@classificationScheme='{scheme}']"):
        eo.remove(c)
    assert metadata_errors(element, attachments) == [f"DocumentEntry {entry.entry_uuid}: {label} missing"]


@pytest.mark.parametrize("name", ["creationTime", "serviceStartTime", "sourcePatientId", "languageCode",
                                  "legalAuthenticator", "hash", "size"])
def test_missing_slots_are_reported(tmp_path, name):
    element, attachments, (entry,), _ = build(tmp_path)
    eo = extrinsic(element, entry.entry_uuid)
    eo.remove(eo.find(f"{R}Slot[@name='{name}']"))
    assert metadata_errors(element, attachments) == [f"DocumentEntry {entry.entry_uuid}: {name} missing"]
    # as the DMP receives it: hash and size are optional for a document source, legalAuthenticator is not
    as_received = metadata_errors(element, attachments, as_received=True)
    assert as_received == ([] if name in ("hash", "size") else [f"DocumentEntry {entry.entry_uuid}: {name} missing"])


def test_a_received_structure_id_other_than_a_finess_is_accepted(tmp_path):
    element, attachments, _, _ = build(tmp_path)
    for value in element.iter(f"{R}Value"):
        if value.text.endswith("^IDNST^^^10B0999998"):
            value.text = "CABINET DR LIBRE^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^499900063480001"  # TD2.1's
    assert len(metadata_errors(element, attachments)) == 3  # ours is always 1 + FINESS géographique
    assert metadata_errors(element, attachments, as_received=True) == []
    for value in element.iter(f"{R}Value"):
        if value.text.endswith("^IDNST^^^499900063480001"):
            value.text = "CABINET DR LIBRE"  # no id at all
    assert metadata_errors(element, attachments, as_received=True) == [
        f"{where}: authorInstitution carries no national structure id (IDNST)"
        for where in ["SubmissionSet"] + [f"DocumentEntry {eo.get('id')}" for eo in element.iter(f"{R}ExtrinsicObject")]
    ]


def test_a_received_document_id_matches_its_entry_ignoring_case_when_one_fits(tmp_path):
    element, attachments, (entry,), _ = build(tmp_path)
    doc = element.find(f"{{urn:ihe:iti:xds-b:2007}}Document[@id='{entry.entry_uuid}']")
    doc.set("id", entry.entry_uuid.upper())
    attachments = {doc.get("id") if k == entry.entry_uuid else k: v for k, v in attachments.items()}
    assert metadata_errors(element, attachments, as_received=True) == []
    assert metadata_errors(element, attachments) == [
        f"DocumentEntry {entry.entry_uuid}: no attached document",
        f"xdsb:Document {entry.entry_uuid.upper()}: no DocumentEntry with this id",
    ]
    twin = copy.deepcopy(extrinsic(element, entry.entry_uuid))  # two entries that fit ignoring case: none is chosen
    twin.set("id", entry.entry_uuid.replace("urn:uuid:", "URN:uuid:"))
    extrinsic(element, entry.entry_uuid).addnext(twin)
    assert f"xdsb:Document {entry.entry_uuid.upper()}: no DocumentEntry with this id" in metadata_errors(
        element, attachments, as_received=True)


def test_missing_membership_and_broken_signature_are_reported(tmp_path):
    element, attachments, (entry,), signature = build(tmp_path)
    objects = element.find(f".//{R}RegistryObjectList")
    for a in list(objects.iter(f"{R}Association")):
        if a.get("targetObject") == entry.entry_uuid or a.get("associationType") == xds.SIGNS:
            objects.remove(a)
    assert metadata_errors(element, attachments) == [
        f"DocumentEntry {entry.entry_uuid}: no HasMember association from the SubmissionSet",
        f"DocumentEntry {signature.entry_uuid}: signature without a 'signs' association",
    ]


def test_errors_carry_no_patient_data(tmp_path):
    element, attachments, _, _ = build(tmp_path, 2)
    broken = copy.deepcopy(element)
    for ei in broken.iter(f"{R}ExternalIdentifier"):
        if ei.get("identificationScheme") == xds.DE_PATIENT_ID:
            ei.set("value", "180032B020401^^^&1.2.250.1.213.1.4.10&ISO^NH")
    errors = metadata_errors(broken, {})
    assert errors and not any("279035121518989" in e or "180032B020401" in e or "PAT-TROIS" in e for e in errors)


# --- parse_request --------------------------------------------------------------------------------


def test_parse_request_round_trips_the_build(tmp_path):
    element, attachments, entries, signature = build(tmp_path, 3, invisible_to_patient=True)
    view = parse_request(etree.fromstring(etree.tostring(element)))
    keys = [e.document.key for e in entries]
    assert view.submission_set_uid == ids.submission_set_unique_id("1.2.250.1.999.42", keys)
    assert view.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert view.ins == ("279035121518989", "1.2.250.1.213.1.4.10")
    assert view.source_id == "1.2.250.1.999.42"
    assert view.submission_time == "20261121020507"
    assert view.finess_geo == "0B0999998"
    assert view.content_type_code == "97"
    assert [(e.entry_uuid, e.unique_id, e.hash, e.size) for e in view.entries] == [
        (e.entry_uuid, e.unique_id, hashlib.sha1(e.cda).hexdigest(), len(e.cda)) for e in entries
    ]
    assert {(e.finess_geo, e.type_code, e.format_code, e.confidentiality_codes) for e in view.entries} == {
        ("0B0999998", "11490-0", "urn:ihe:iti:xds-sd:pdf:2008", ("N", "INVISIBLE_PATIENT"))
    }
    assert [e.title for e in view.entries] == ["Lettre 1", "Lettre 2", "Lettre 3"]
    assert view.signature.entry_uuid == signature.entry_uuid
    assert view.signature.unique_id == signature.unique_id
    assert view.signature.size == len(signature.xml)


def test_builder_module_exposes_the_checks(tmp_path):
    element, attachments, _, _ = build(tmp_path)
    assert xds.metadata_errors(element, {}) != [] and xds.metadata_errors(element, attachments) == []
    assert xds.parse_request(element) == parse_request(element)


def test_schema_validation_catches_a_broken_request(tmp_path):
    element, _, _, _ = build(tmp_path)
    element.find(f".//{R}ExtrinsicObject").append(etree.Element(f"{R}Bogus"))
    assert schema_errors(element) != []


def test_parse_request_tolerates_a_foreign_request():
    view = parse_request(etree.fromstring(b"<x/>"))
    assert view.submission_set_uid is None and view.entries == () and view.signature is None
    assert metadata_errors(etree.fromstring(b"<x/>"), {}) != []


# --- inputs refused -------------------------------------------------------------------------------


def test_a_document_of_another_site_is_refused(tmp_path):
    with pytest.raises(ValueError, match="DOC0001"):
        build(tmp_path, finess_geo="0B0999997")


@pytest.mark.parametrize("field", ["author_rpps", "type_code", "created_at"])
def test_missing_required_document_data_is_refused(tmp_path, field):
    from connector.payload.errors import PayloadError

    with pytest.raises(PayloadError) as info:
        build(tmp_path, **{field: None})
    assert "DOC0001" in str(info.value)


def test_a_type_code_outside_j07_keeps_the_title_as_display(tmp_path):
    doc = make_document(type_code="99999-9", title="Note locale")
    settings = make_settings(tmp_path, submission={"class_code_fallback": "10"})
    element, attachments, (entry,), _ = build(tmp_path, documents=[doc], settings=settings)
    found = codes(extrinsic(element, entry.entry_uuid), xds.DE_TYPE_CODE)
    assert found == [("99999-9", "2.16.840.1.113883.6.1", "Note locale")]


@pytest.mark.parametrize("type_code, class_code, display", [
    ("18748-4", "31", "Imagerie médicale"),
    ("34133-9", "11", "Synthèse"),
    ("11490-0", "10", "Compte rendu"),
    ("11369-6", "52", "Certificat, déclaration"),
    ("PRESC-KINE", "42", "Prescription"),
])
def test_class_code_follows_ass_x16(tmp_path, type_code, class_code, display):
    element, _, (entry,), _ = build(tmp_path, documents=[make_document(type_code=type_code)])
    assert codes(extrinsic(element, entry.entry_uuid), xds.DE_CLASS_CODE) == [
        (class_code, "1.2.250.1.213.1.1.4.1", display)]


def test_a_type_outside_ass_x16_takes_the_fallback_class_or_is_refused(tmp_path):
    doc = make_document(type_code="51851-4")  # JDV_J07 "Document administratif", not in ASS_X16
    with pytest.raises(PayloadError, match="DOC0001: type_code 51851-4 is not in ASS_X16"):
        build(tmp_path, documents=[doc])
    settings = make_settings(tmp_path, submission={"class_code_fallback": "95"})
    element, _, (entry,), _ = build(tmp_path, documents=[doc], settings=settings)
    assert codes(extrinsic(element, entry.entry_uuid), xds.DE_CLASS_CODE) == [
        ("95", "1.2.250.1.213.1.1.4.1", "Document de gestion")]


@pytest.mark.parametrize("activity, expected", [
    ("I", ("03", "1.2.250.1.213.2.2", "Hospitalisation complète (non compris hospitalisation de semaine)")),
    ("O", ("07", "1.2.250.1.213.2.2", "Consultations soins externes")),
    ("R", ("19", "1.2.250.1.213.2.2", "Traitement et cure ambulatoire")),
    ("N", ("97", "1.2.250.1.213.2.2", "Type d'activité indifférencié")),
    ("04", ("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")),
    ("SA07", ("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel")),
    ("11^1.2.250.1.213.1.6.1.128", ("11", "1.2.250.1.213.1.6.1.128", "Centre postcure")),
])
def test_content_type_code_is_the_documents_activity(tmp_path, activity, expected):
    element, *_ = build(tmp_path, 2, activity=activity)
    (package,) = element.iter(f"{R}RegistryPackage")
    assert codes(package, xds.SS_CONTENT_TYPE) == [expected]


def test_the_default_activity_is_a_setting(tmp_path):
    settings = make_settings(tmp_path, submission={"default_activity": "I"})
    element, *_ = build(tmp_path, settings=settings)
    (package,) = element.iter(f"{R}RegistryPackage")
    assert [c[0] for c in codes(package, xds.SS_CONTENT_TYPE)] == ["03"]


@pytest.mark.parametrize("text", ["&F&", "a|b", "\\F\\", "x^y&z~w\\v", "\\T\\F\\S\\", "&&", "|^"])
def test_hl7_unescape_undoes_escape(text):
    """Escapes are read left to right: `&F&` escapes as `\\T\\F\\T\\`, whose middle is not a `\\F\\`."""
    assert hl7.unescape(hl7.escape(text)) == text
