"""CDA R2 level-1 builder (structuration minimale) and the passthrough check of store CDAs."""

from __future__ import annotations

import base64
import datetime as dt
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from lxml import etree

from connector.config import Site
from connector.payload import cda, codes, ids, validate
from connector.payload.errors import PayloadError
from connector.resources import ans_kit
from connector.trust import xmlsig

from conftest import make_document, make_patient, make_settings, replace

NS = {"v3": "urn:hl7-org:v3"}
PDF = b"%PDF-1.4\n% fictitious test content \xe9\n%%EOF\n"
EXAMPLE = ans_kit() / "ExemplesCDA" / "DOC_NON_STRUCTURE_CDA-R2-N1.xml"


@pytest.fixture(scope="module")
def structure(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("cda")).structure


@pytest.fixture(scope="module")
def site(structure):
    return structure.sites[0]


def build(structure, site, document=None, patient=None, content=PDF) -> bytes:
    document = document or make_document()
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    return cda.build_cda(document, patient or make_patient(), site, structure, content, unique_id=uid)


def xpath(xml: bytes, path: str):
    return etree.fromstring(xml).xpath(path, namespaces=NS)


def test_built_cda_is_valid(structure, site):
    xml = build(structure, site)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument ')
    assert validate.cda_errors(xml) == []


def test_header_identifiers_times_and_body(structure, site):
    document = make_document(version=3)
    xml = build(structure, site, document)
    assert xpath(xml, "/v3:ClinicalDocument/v3:id/@root") == [ids.document_unique_id(structure.oid_root, "DOC0001", 3)]
    assert xpath(xml, "/v3:ClinicalDocument/v3:setId/@root") == [ids.document_set_id(structure.oid_root, "DOC0001")]
    assert xpath(xml, "/v3:ClinicalDocument/v3:versionNumber/@value") == ["3"]
    assert xpath(xml, "/v3:ClinicalDocument/v3:code/@code") == ["11490-0"]
    assert xpath(xml, "/v3:ClinicalDocument/v3:code/@displayName") == [codes.type_code("11490-0").display]
    assert xpath(xml, "/v3:ClinicalDocument/v3:effectiveTime/@value") == ["20261120143000+0100"]
    ids_ = xpath(xml, "//v3:patientRole/v3:id")
    assert [(i.get("root"), i.get("extension")) for i in ids_] == [
        ("1.2.250.1.213.1.4.10", "279035121518989"),
        (ids.ipp_authority(structure.oid_root), "IPP0001"),
    ]
    assert xpath(xml, "//v3:assignedAuthor/v3:id/@extension") == ["810001234567"]
    assert xpath(xml, "//v3:healthCareFacility/v3:id/@extension") == ["10B0999998"]
    assert xpath(xml, "//v3:healthCareFacility/v3:code/@code") == ["SA01"]
    assert xpath(xml, "//v3:standardIndustryClassCode/@code") == ["ETABLISSEMENT"]
    assert xpath(xml, "//v3:custodian//v3:id/@extension") == ["1" + structure.finess_ej]
    text = xpath(xml, "//v3:nonXMLBody/v3:text")[0]
    assert (text.get("mediaType"), text.get("representation")) == ("application/pdf", "B64")
    assert base64.b64decode(text.text) == PDF


def test_summer_time_and_aware_datetimes(structure, site):
    summer = dt.datetime(2026, 7, 1, 8, 15, tzinfo=dt.timezone.utc)
    xml = build(structure, site, make_document(created_at=summer, service_start=dt.datetime(2026, 7, 1, 9, 0),
                                               service_stop=None))
    assert xpath(xml, "/v3:ClinicalDocument/v3:effectiveTime/@value") == ["20260701101500+0200"]
    assert xpath(xml, "//v3:serviceEvent/v3:effectiveTime/v3:low/@value") == ["20260701090000+0200"]
    assert xpath(xml, "//v3:serviceEvent/v3:effectiveTime/v3:high") == []
    assert validate.cda_errors(xml) == []


def test_instant_service_has_no_high_equal_to_low(structure, site):
    """Found by the property test: the schematron forbids IVL_TS low == high (dtr1-6)."""
    instant = dt.datetime(2026, 11, 15, 9, 0)
    xml = build(structure, site, make_document(service_start=instant, service_stop=instant))
    assert xpath(xml, "//v3:effectiveTime/v3:high") == []
    assert validate.cda_errors(xml) == []


def test_body_is_spliced_after_any_header_text(structure, site):
    """The base64 body is spliced into the canonical header at the last mark: a title holding the mark
    stays the title."""
    xml = build(structure, site, make_document(title="@BODY@ & <co>"), content=PDF)
    assert xpath(xml, "/v3:ClinicalDocument/v3:title/text()") == ["@BODY@ & <co>"]
    assert base64.b64decode(xpath(xml, "//v3:nonXMLBody/v3:text/text()")[0]) == PDF
    assert validate.cda_errors(xml) == []


def test_blank_title_falls_back_to_the_type_display(structure, site):
    """Found by the property test: a blank title fails dtr1-1-BIN."""
    xml = build(structure, site, make_document(title=" "))
    assert xpath(xml, "/v3:ClinicalDocument/v3:title/text()") == [codes.type_code("11490-0").display]
    assert validate.cda_errors(xml) == []


def test_build_is_deterministic(structure, site):
    assert build(structure, site) == build(structure, site)


def test_accents_apostrophes_corsica_and_unknown_sex(structure, site):
    patient = make_patient(birth_family_name="N'GUESSAN", birth_given_names="Éloïse-Anaïs Zoé",
                           used_family_name="DE L'ÉTANG-N'GUESSAN", used_given_name="Éloïse",
                           sex="U", birth_place_code="2A004")
    document = make_document(author_family_name="D'ALEMBERT", author_given_name="Hélène")
    xml = build(structure, site, document, patient)
    name = "//v3:patient/v3:name"
    assert xpath(xml, f"{name}/v3:family[@qualifier='BR']/text()") == ["N'GUESSAN"]
    assert xpath(xml, f"{name}/v3:given[not(@qualifier)]/text()") == ["Éloïse-Anaïs Zoé"]
    assert xpath(xml, f"{name}/v3:given[@qualifier='BR']/text()") == ["Éloïse-Anaïs"]
    assert xpath(xml, f"{name}/v3:family[@qualifier='CL']/text()") == ["DE L'ÉTANG-N'GUESSAN"]
    assert xpath(xml, f"{name}/v3:given[@qualifier='CL']/text()") == ["Éloïse"]
    assert xpath(xml, "//v3:birthplace/v3:place/v3:addr/v3:county/text()") == ["2A004"]
    assert xpath(xml, "//v3:administrativeGenderCode/@code") == ["UN"]  # JDV_J143
    assert xpath(xml, "//v3:assignedAuthor/v3:assignedPerson/v3:name/v3:family/text()") == ["D'ALEMBERT"]
    assert validate.cda_errors(xml) == []


def test_used_names_are_optional(structure, site):
    xml = build(structure, site, patient=make_patient(used_family_name=None, used_given_name=None))
    assert xpath(xml, "//v3:patient/v3:name/*[@qualifier='CL']") == []
    assert validate.cda_errors(xml) == []


def test_other_legal_authenticator_and_unknown_specialty(structure, site):
    document = make_document(legal_authenticator_rpps="10009876543", author_specialty_code="NOT-A-CODE")
    xml = build(structure, site, document)
    assert xpath(xml, "//v3:legalAuthenticator/v3:assignedEntity/v3:id/@extension") == ["810009876543"]
    assert xpath(xml, "//v3:assignedAuthor/v3:code") == []
    assert validate.cda_errors(xml) == []


@pytest.mark.parametrize(
    "patient_changes, document_changes, field",
    [
        ({"birth_date": None}, {}, "birth_date"),
        ({"birth_given_names": None}, {}, "birth_given_names"),
        ({"birth_given_names": "  "}, {}, "birth_given_names"),
        ({"birth_family_name": " "}, {}, "birth_family_name"),
        ({"birth_place_code": None}, {}, "birth_place_code"),
        ({"sex": "X"}, {}, "sex"),
        ({"ins_oid": "1.2.3"}, {}, "INS"),
        ({}, {"author_rpps": None}, "author_rpps"),
        ({}, {"type_code": "NOPE"}, "type_code"),
        ({}, {"type_code": "E1762"}, "type_code"),  # the signature's ASTM type, no CDA document type
        ({}, {"service_start": None}, "service_start"),
        ({}, {"mime_type": "image/png"}, "mime_type"),
        ({}, {"service_stop": dt.datetime(2026, 11, 1)}, "service_stop"),
    ],
)
def test_missing_input_names_document_and_field(structure, site, patient_changes, document_changes, field):
    with pytest.raises(PayloadError) as caught:
        build(structure, site, make_document(**document_changes), make_patient(**patient_changes))
    assert caught.value.reason == "METADATA_INVALID"
    message = str(caught.value)
    assert "DOC0001" in message and field in message
    assert "279035121518989" not in message and "PAT-TROIS" not in message


def test_empty_content_is_refused(structure, site):
    with pytest.raises(PayloadError, match="DOC0001.*content is empty"):
        build(structure, site, content=b"")


def test_site_codes_outside_their_value_sets_are_refused(structure):
    bad_site = Site(finess_geo="0B0999998", name="x", healthcare_facility_type="SA99", practice_setting="ETABLISSEMENT")
    with pytest.raises(PayloadError, match="healthcare_facility_type"):
        build(structure, bad_site)


# --- property: every valid input gives a valid CDA ---------------------------------------------------

NAME_CHARS = string.ascii_uppercase + "ÉÈÊËÏÎÔÖÇÀÂÙÛÜŸÆŒéèêëïîôçàâùûüÿæœ'-" + "abcdefghijklmnopqrstuvwxyz"
name_word = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12)
J07_DOCUMENT_TYPES = sorted(c for c in codes.value_set(codes.TYPE_CODES) if codes.is_type_code(c))
local_times = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2035, 12, 31))


@st.composite
def patients_and_documents(draw):
    given_names = draw(st.lists(name_word, min_size=1, max_size=3))
    patient = make_patient(
        ins_oid=draw(st.sampled_from(sorted(cda.INS_OIDS))),
        ins_matricule=draw(st.from_regex(r"[12][0-9]{14}", fullmatch=True)),
        birth_family_name=" ".join(draw(st.lists(name_word, min_size=1, max_size=2))),
        birth_given_names=" ".join(given_names),
        used_family_name=draw(st.none() | name_word),
        used_given_name=draw(st.none() | st.sampled_from(given_names)),
        sex=draw(st.sampled_from("MFU")),
        birth_date=draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2026, 12, 31))),
        birth_place_code=draw(st.sampled_from(["51215", "2A004", "2B033", "99134", "75056", "97411"])),
    )
    start = draw(local_times)
    document = make_document(
        document_id=draw(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)),
        version=draw(st.integers(min_value=1, max_value=10**6)),
        type_code=draw(st.sampled_from(J07_DOCUMENT_TYPES)),
        title=draw(st.text(alphabet=NAME_CHARS + " &<>\"", min_size=1, max_size=60)),
        service_start=start,
        service_stop=draw(st.none() | st.just(start + dt.timedelta(hours=draw(st.integers(0, 2000))))),
        created_at=start + dt.timedelta(minutes=draw(st.integers(0, 10**6))),
        author_family_name=draw(name_word),
        author_given_name=draw(st.none() | name_word),
        author_specialty_code=draw(st.sampled_from(["G15_10/SM26", "G15_10/SM03", "10", None])),
    )
    return patient, document, draw(st.binary(min_size=0, max_size=64))


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patients_and_documents())
def test_any_valid_patient_and_document_gives_a_valid_cda(structure, site, case):
    patient, document, content = case
    xml = build(structure, site, document, patient, content=PDF + content)  # never empty
    assert validate.cda_errors(xml) == []
    assert xpath(xml, "//v3:patient/v3:name/v3:family[@qualifier='BR']/text()") == [patient.birth_family_name]
    # written canonical: the signature's shortcut digest is the digest of the real canonical form
    assert bytes(xml.canonical()) == xmlsig.canonicalize(etree.ElementTree(etree.fromstring(xml)), xmlsig.C14N_WITH_COMMENTS)
    # every element is one the reduced schematron of our own CDAs keeps the rules of
    assert {etree.QName(e).localname for e in etree.fromstring(xml).iter()} <= validate.GENERATED_ELEMENTS


# --- passthrough ------------------------------------------------------------------------------------

EXAMPLE_PATIENT = dict(ins_oid="1.2.250.1.213.1.4.10", ins_matricule="279035121518989", birth_family_name="PAT-TROIS",
                       birth_given_names="DOMINIQUE MARIE-LOUISE", birth_date=dt.date(1979, 3, 28), sex="F")
EXAMPLE_SITE = Site(finess_geo="750512345", name="Cabinet", healthcare_facility_type="SA07", practice_setting="AMBULATOIRE")
EXAMPLE_ID = "1.3.6.1.4.1.19376.1.2.20.12345.1.1"  # the example's id root: the uniqueId its metadata would use


def passthrough(content: bytes, patient=None, site=EXAMPLE_SITE, unique_id=EXAMPLE_ID) -> bytes:
    return cda.check_passthrough_cda(content, make_document(mime_type="text/xml"),
                                     patient or make_patient(**EXAMPLE_PATIENT), site, unique_id)


def test_passthrough_accepts_matching_cda_unchanged():
    content = EXAMPLE.read_bytes()
    assert passthrough(content) is content


@pytest.mark.parametrize(
    "patient_changes, site",
    [
        ({"ins_matricule": "180032B02040123"}, EXAMPLE_SITE),
        ({"ins_oid": "1.2.250.1.213.1.4.8"}, EXAMPLE_SITE),
        ({}, replace(EXAMPLE_SITE, finess_geo="0B0999998")),
    ],
)
def test_passthrough_rejects_another_patient_or_site(patient_changes, site):
    with pytest.raises(PayloadError) as caught:
        passthrough(EXAMPLE.read_bytes(), make_patient(**{**EXAMPLE_PATIENT, **patient_changes}), site)
    assert caught.value.reason == "CDA_INVALID" and "DOC0001" in str(caught.value)
    assert "279035121518989" not in str(caught.value)


@pytest.mark.parametrize(
    "patient_changes, unique_id, what",
    [
        ({"birth_family_name": "PAT-QUATRE"}, EXAMPLE_ID, "birth name"),
        ({"birth_given_names": "DOMINIQUE"}, EXAMPLE_ID, "birth given names"),
        ({"birth_date": dt.date(1979, 3, 29)}, EXAMPLE_ID, "birth date"),
        ({"sex": "M"}, EXAMPLE_ID, "sex"),
        ({}, "1.2.250.1.999.42.1.1.1", "id"),  # another document's CDA, or an id the metadata does not use
    ],
)
def test_passthrough_rejects_other_identity_traits_or_another_cda_id(patient_changes, unique_id, what):
    """The INS alone matched: a CDA of another identity with the same INS, or whose id is not the uniqueId
    the XDS metadata gives it, was sent."""
    with pytest.raises(PayloadError) as caught:
        passthrough(EXAMPLE.read_bytes(), make_patient(**{**EXAMPLE_PATIENT, **patient_changes}), unique_id=unique_id)
    assert caught.value.reason == "CDA_INVALID" and f"CDA's {what} " in str(caught.value)
    assert "PAT-" not in str(caught.value) and "1979" not in str(caught.value)


def test_passthrough_takes_its_unique_id_from_the_cda_and_a_missing_facility_from_the_store_row():
    """A CDA produced elsewhere: its own id is its uniqueId (root, or root^extension), whatever the connector
    would derive; without a healthCareFacility id (the CI-SIS allows it) the store row's FINESS stands."""
    content = EXAMPLE.read_bytes()
    document, patient = make_document(mime_type="text/xml"), make_patient(**EXAMPLE_PATIENT)
    assert cda.passthrough_cda(content, document, patient, EXAMPLE_SITE) == (EXAMPLE_ID, content)
    no_facility = re.sub(rb'(<healthCareFacility>)\s*<id [^>]*/>', rb"\1", content)
    assert no_facility != content
    assert cda.passthrough_cda(no_facility, document, patient, replace(EXAMPLE_SITE, finess_geo="300017985"))[0] == EXAMPLE_ID
    extended = content.replace(f'<id root="{EXAMPLE_ID}"/>'.encode(), f'<id root="{EXAMPLE_ID}" extension="A-7"/>'.encode())
    assert extended != content
    assert cda.passthrough_cda(extended, document, patient, EXAMPLE_SITE)[0] == f"{EXAMPLE_ID}^A-7"


@pytest.mark.parametrize("new_id", [b'<id root="not-an-oid"/>', b'<id nullFlavor="UNK"/>',
                                    b'<id root="1.2.3" extension="' + b"x" * 70 + b'"/>'])
def test_passthrough_refuses_an_id_that_gives_no_unique_id(new_id):
    content = EXAMPLE.read_bytes().replace(f'<id root="{EXAMPLE_ID}"/>'.encode(), new_id)
    with pytest.raises(PayloadError) as caught:
        cda.passthrough_cda(content, make_document(mime_type="text/xml"), make_patient(**EXAMPLE_PATIENT), EXAMPLE_SITE)
    assert caught.value.reason == "CDA_INVALID" and "uniqueId" in str(caught.value)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""


@pytest.mark.parametrize("content", [BILLION_LAUGHS, XXE, b"<ClinicalDocument", b"<html/>"])
def test_passthrough_refuses_bombs_xxe_and_non_cda(content):
    with pytest.raises(PayloadError) as caught:
        passthrough(content)
    assert caught.value.reason == "CDA_INVALID"
    assert "root:" not in str(caught.value)  # nothing of /etc/passwd leaks


# --- the tree the builder validates instead of parsing its bytes back ---------------------------


@pytest.mark.parametrize("replaces", [None, "rplc"])
def test_the_validated_tree_is_the_bytes_but_for_the_body(structure, site, replaces):
    """`build_cda_tree`'s tree (what prepare validates) is exactly the sent bytes once their base64 body is put back
    to the placeholder: the XSD and the schematron see what is sent."""
    from connector.payload.lifecycle import Replaces

    document = make_document(version=2)
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    old = Replaces("urn:uuid:11111111-1111-1111-1111-111111111111",
                   ids.document_unique_id(structure.oid_root, document.document_id, 1), 1)
    xml, tree = cda.build_cda_tree(document, make_patient(), site, structure, PDF, unique_id=uid,
                                   replaces=old if replaces else None)
    sent = etree.fromstring(xml)
    sent.find("v3:component/v3:nonXMLBody/v3:text", NS).text = cda._BODY_MARK
    assert etree.tostring(sent, method="c14n") == etree.tostring(tree, method="c14n")
    assert xml == cda.build_cda(document, make_patient(), site, structure, PDF, unique_id=uid,
                                replaces=old if replaces else None)


def test_a_built_cda_the_xsd_refuses_is_still_caught(tmp_path, monkeypatch):
    """A builder defect (no typeId, which the ANS CDA XSD requires) fails the document CDA_INVALID with the errors a
    parse of its bytes gives, though prepare validates the built tree."""
    from connector import prepare

    settings = make_settings(tmp_path)
    add = cda._Builder.add
    monkeypatch.setattr(cda._Builder, "add", lambda self, parent, tag, *a, **k: (
        etree.SubElement(parent, "{urn:hl7-org:v3}realmCode", code="FR") if tag == "typeId" else add(self, parent, tag, *a, **k)))
    document = make_document()
    with pytest.raises(PayloadError) as caught:
        prepare.document_cda(settings, document, make_patient(), settings.structure.sites[0], PDF)
    assert caught.value.reason == "CDA_INVALID"
    from_bytes = validate.cda_errors(build(settings.structure, settings.structure.sites[0], document), schematron=False)
    assert from_bytes and "typeId" in from_bytes[0]
    assert str(caught.value) == f"CDA_INVALID: {document.document_id}: {'; '.join(from_bytes[:3])}" + (
        f" (+{len(from_bytes) - 3} more)" if len(from_bytes) > 3 else "")


@pytest.mark.parametrize("defect", ["no title", "bad language", "empty setId"])
def test_the_built_tree_gets_the_verdict_of_its_bytes_schematron_included(structure, site, defect):
    """A builder defect gives the same XSD and schematron errors whether the validation takes the built tree or
    parses the bytes that tree is written as."""
    document = make_document()
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    _, tree = cda.build_cda_tree(document, make_patient(), site, structure, PDF, unique_id=uid)
    root = tree.getroot()
    if defect == "no title":
        root.remove(root.find("v3:title", NS))
    elif defect == "bad language":
        root.find("v3:languageCode", NS).set("code", "xx")
    else:
        root.find("v3:setId", NS).set("root", "")
    before, _, after = etree.tostring(tree, method="c14n").rpartition(cda._BODY_MARK.encode())
    xml = xmlsig.XML_DECLARATION + before + base64.b64encode(PDF) + after
    from_bytes = validate.cda_errors(xml)
    assert from_bytes and validate._start_cda_errors(xml, True, None, tree=tree)() == from_bytes
