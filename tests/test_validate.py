"""The validators: ANS CDA XSD + structuration minimale schematron, XDS.b/ebRS and SAML schemas."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from lxml import etree

from connector.payload import cda, validate
from connector.payload.errors import PayloadError
from connector.payload.lifecycle import Replaces
from connector.resources import ans_kit

from conftest import make_document, make_patient, make_settings

EXAMPLE = ans_kit() / "ExemplesCDA" / "DOC_NON_STRUCTURE_CDA-R2-N1.xml"
INS_TRAITS_ERROR = "les traits de l'INS"


@pytest.fixture(scope="module")
def example() -> bytes:
    return EXAMPLE.read_bytes()


def without(xml: bytes, pattern: str, replacement: bytes = b"") -> bytes:
    changed = re.sub(pattern.encode(), replacement, xml, count=1, flags=re.S)
    assert changed != xml, f"pattern {pattern!r} not found"
    return changed


# --- CDA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DOC_NON_STRUCTURE_CDA-R2-N1.xml", "BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml"])
def test_ans_examples_have_no_errors(name):
    assert validate.cda_errors((ans_kit() / "ExemplesCDA" / name).read_bytes()) == []


@pytest.mark.parametrize(
    "pattern",
    [
        r'<birthTime value="19790328"/>',
        r'<given qualifier="BR">DOMINIQUE</given>',
        r'<family qualifier="BR">PAT-TROIS</family>',
        r"<county>51215</county>",
    ],
)
def test_schematron_requires_every_ins_trait(example, pattern):
    errors = validate.cda_errors(without(example, pattern))
    assert any(INS_TRAITS_ERROR in e for e in errors), errors


def test_schematron_requires_the_health_care_facility(example):
    errors = validate.cda_errors(without(example, r"<location>.*?</location>"))
    assert any("encompassingEncounter" in e and "location" in e for e in errors), errors


def test_schematron_checks_the_type_code_against_j07(example):
    """Proves the generated voc-…471 (JDV_J07) is loaded: an unknown LOINC code is an error."""
    errors = validate.cda_errors(without(example, r'code="11502-2"', b'code="99999-9"'))
    assert any("1.2.250.1.213.1.1.5.471" in e for e in errors), errors


def test_the_schematron_runs_with_its_published_xpath_2_semantics():
    """queryBinding xslt2: no XPath 1.0 compatibility mode, for the reference and for the run's stylesheets."""
    for path in (validate.stylesheet_path(), validate.stylesheet_path(validate.GENERATED_ELEMENTS)):
        assert etree.parse(str(path)).getroot().get("version") == "2.0"


def test_warnings_are_not_errors(example, reference_schematron):
    """An element the closed templates do not list is a schematron warning, not an error."""
    tree = validate.parse_untrusted(without(example, r"</title>", b"</title><extra/>"))
    svrl = reference_schematron.svrl(tree)
    roles = {f.get("role") for f in svrl.iter("{http://purl.oclc.org/dsdl/svrl}failed-assert")}
    assert roles == {"warning"}
    assert validate.schematron_errors(tree) == []


@pytest.fixture(scope="module")
def generated_cda(tmp_path_factory) -> bytes:
    structure = make_settings(tmp_path_factory.mktemp("validate")).structure
    return cda.build_cda(make_document(), make_patient(), structure.sites[0], structure, b"%PDF-1.4 x",
                         unique_id="1.2.250.1.999.42.1.1.1")


@pytest.fixture(scope="module")
def generated_replacement_cda(tmp_path_factory) -> bytes:
    """Our CDA of a version 2 replacing version 1 (relatedDocument RPLC)."""
    structure = make_settings(tmp_path_factory.mktemp("validate")).structure
    return cda.build_cda(make_document(version=2), make_patient(), structure.sites[0], structure, b"%PDF-1.4 x",
                         unique_id="1.2.250.1.999.42.1.1.2",
                         replaces=Replaces("urn:uuid:7953af1a-ba1c-11eb-816f-0050569e422e", "1.2.250.1.999.42.1.1.1", 1))


MUTATIONS = [  # (pattern, replacement): each breaks a rule of the kit, in the examples' form and in our canonical one
    (r'<birthTime value="[0-9]+"\s*(/>|></birthTime>)', b""),
    (r'<birthTime value="[0-9]+"', b'<birthTime value="1979x0328"'),
    (r'<given qualifier="BR">[^<]*</given>', b""),
    (r"<county>[^<]*</county>", b""),
    (r"<location>.*?</location>", b""),
    (r'<code code="11490-0"', b'<code code="99999-9"'),
    (r'code="11502-2"', b'code="99999-9"'),
    (r'<confidentialityCode code="N"', b'<confidentialityCode code="Z"'),
    (r'<languageCode code="fr-FR"\s*(/>|></languageCode>)', b""),
    (r"<legalAuthenticator>.*?</legalAuthenticator>", b""),
    (r'<administrativeGenderCode code="[A-Z]+"', b'<administrativeGenderCode code="X"'),
    (r'<effectiveTime value="[0-9+]+"', b'<effectiveTime value="2026"'),
    (r'<parentDocument><id root="[^"]*"></id>', b'<parentDocument>'),  # our replacement CDAs only
]


def test_reduced_stylesheets_find_exactly_the_reference_errors(example, generated_cda, generated_replacement_cda,
                                                               reference_schematron):
    """Our stylesheets drop warnings, info, successful reports, assertion-free patterns and (for the
    connector's own CDAs) the rules of elements it never writes: on the ANS examples, on our CDAs and on
    broken variants of both, they report the same errors, in the same order, as the complete schematron."""
    documents = [example, (ans_kit() / "ExemplesCDA" / "BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml").read_bytes(),
                 generated_cda, generated_replacement_cda]
    broken = [re.sub(p.encode(), r, xml, count=1, flags=re.S) for xml in documents for p, r in MUTATIONS]
    assert sum(b != generated_replacement_cda for b in broken[-len(MUTATIONS):]) >= 12  # they do apply to our CDAs
    variants = {"generated": 0, "any": 0}
    compared = 0
    for xml in documents + [b for b in broken if b not in documents]:
        try:
            tree = validate.parse_untrusted(xml)
        except ValueError:  # a mutation cut across elements of the example: not a CDA any more
            continue
        validate._shrink_body(tree)
        expected = reference_schematron.errors(tree)
        assert validate.schematron_errors(tree) == expected
        variants["generated" if validate._schematron_for(tree) is validate._generated else "any"] += 1
        compared += bool(expected)
    assert variants["generated"] >= 8 and variants["any"] >= 8, variants  # both stylesheets were exercised
    assert compared >= 20  # most mutations did break a rule


def test_the_generated_stylesheet_is_smaller(example):
    assert validate.stylesheet_path(validate.GENERATED_ELEMENTS).stat().st_size * 2 < validate.stylesheet_path().stat().st_size


def test_required_names_of_rule_patterns():
    ns = {"hl7": validate.HL7_NS, "cda": validate.HL7_NS, "sdtc": "urn:hl7-org:sdtc", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
    names = validate._required_names
    assert names("//hl7:ClinicalDocument[hl7:typeId[@root = '2.1']]/hl7:recordTarget[not(@nullFlavor)]", ns) == [
        {"ClinicalDocument", "typeId", "recordTarget"}]
    # a predicate testing that elements exist needs them; one negating or combining them does not
    assert names("hl7:author/hl7:addr[hl7:streetAddressLine]", ns) == [{"author", "addr", "streetAddressLine"}]
    assert names("hl7:addr[hl7:a/hl7:b[@x = '1']][hl7:c[not(hl7:d)]] | hl7:e", ns) == [{"addr", "a", "b", "c"}, {"e"}]
    for predicate in ("not(hl7:streetAddressLine)", "hl7:a or hl7:b", "count(hl7:a) = 0", "not(hl7:a[hl7:b])"):
        assert names(f"hl7:addr[{predicate}]", ns) == [{"addr"}], predicate
    assert names("hl7:addr[matches(., '[a|b]/x')] | cda:telecom", ns) == [{"addr"}, {"telecom"}]
    assert names("//hl7:ClinicalDocument/*[not(self::hl7:id)]", ns) == [{"ClinicalDocument"}]
    assert names("hl7:code/@code | hl7:value/attribute::xsi:type", ns) == [{"code"}, {"value"}]
    assert names("hl7:patient/sdtc:raceCode", ns) == [{"patient"}]
    assert names("ancestor::hl7:section/child::hl7:entry", ns) == [{"section", "entry"}]
    assert names("id('x')/hl7:code", ns) is None


def test_rules_needing_an_element_we_never_write_are_dropped():
    """Only the connector's variant drops rules, and only those whose context needs an element it never writes:
    named along its path or in a predicate requiring it (`addr[hl7:streetAddressLine]`)."""
    ours, whole = (etree.parse(str(validate.stylesheet_path(e))) for e in (validate.GENERATED_ELEMENTS, None))
    kept = {t.get("match") for t in ours.iter(f"{validate._XSL}template")}
    dropped = [t for t in whole.iter(f"{validate._XSL}template") if t.get("match") not in kept]
    assert any("/hl7:informationRecipient[" in t.get("match") and t.get("match").endswith("/hl7:templateId") for t in dropped)
    assert any(t.get("match").endswith("/hl7:addr[hl7:streetAddressLine]") for t in dropped)
    assert any(t.get("match").endswith("/hl7:addr[not(hl7:streetAddressLine)]") for t in ours.iter(f"{validate._XSL}template"))
    for template in dropped:
        alternatives = validate._required_names(template.get("match"), template.nsmap)
        assert all(not names <= validate.GENERATED_ELEMENTS for names in alternatives), template.get("match")


def test_value_sets_are_read_once_when_compiling():
    """doc() in a test would reload its value set for every document: only static variables call it."""
    xsl = etree.parse(str(validate.stylesheet_path(validate.GENERATED_ELEMENTS))).getroot()
    calls = [e for e in xsl.iter(f"{validate._XSL}*") for name in validate._XPATH_ATTRIBUTES if "doc(" in (e.get(name) or "")]
    assert calls and all(e.get("static") == "yes" and e.getparent() is xsl for e in calls)
    assert "voc-1.2.250.1.213.1.1.5.467-DYNAMIC.xml" in " ".join(e.get("select") for e in calls)


def test_errors_name_the_location_and_hide_document_values(example):
    xml = without(example, r'<birthTime value="19790328"/>', b'<birthTime value="1979x0328"/>')
    errors = validate.cda_errors(xml)
    assert any(e.startswith("XSD /ClinicalDocument/recordTarget/patientRole/patient/birthTime") for e in errors)
    assert any(e.startswith("schematron /ClinicalDocument/recordTarget/patientRole/patient/birthTime") for e in errors)
    assert not any("1979x0328" in e for e in errors), errors


def test_validate_cda_raises_cda_invalid_naming_the_document(example):
    with pytest.raises(PayloadError) as caught:
        validate.validate_cda(without(example, r'<birthTime value="19790328"/>'), "DOC42")
    assert caught.value.reason == "CDA_INVALID"
    assert str(caught.value.message).startswith("DOC42: ")
    assert "279035121518989" not in str(caught.value) and "PAT-TROIS" not in str(caught.value)
    validate.validate_cda(example, "DOC42")  # valid: no exception


@pytest.mark.parametrize(
    "xml",
    [
        b"<ClinicalDocument",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ClinicalDocument xmlns="urn:hl7-org:v3">&a;</ClinicalDocument>',
    ],
)
def test_cda_errors_refuses_bad_xml_and_doctype(xml):
    errors = validate.cda_errors(xml)
    assert len(errors) == 1 and ("DOCTYPE" in errors[0] or "well-formed" in errors[0])


def test_a_cda_whose_body_is_over_10_mb_is_read(example):
    """The base64 of a PDF of ~8 MB and more (`rules.max_document_bytes` allows 20 MiB) is one text node over
    libxml2's default 10 MB cap: it was refused as "not well-formed"."""
    body = b"<!--" + b"x" * (11 * 1024 * 1024) + b"-->"
    big = example.replace(b"</ClinicalDocument>", body + b"</ClinicalDocument>")
    assert validate.parse_untrusted(big).getroot().tag == "{urn:hl7-org:v3}ClinicalDocument"
    assert validate.cda_errors(big, schematron=False) == []


def test_generated_stylesheet_is_cached_with_the_j07_value_set():
    path = validate.stylesheet_path()
    assert validate.stylesheet_path() == path
    voc = (path.parent / "voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml").read_text(encoding="utf-8")
    assert 'code="11490-0"' in voc and 'code="11502-2"' in voc


def test_concurrent_validation_gives_the_same_answers(example):
    bad = without(example, r'<birthTime value="19790328"/>')
    inputs = [example, bad] * 6
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(validate.cda_errors, inputs))
    assert [bool(r) for r in results] == [False, True] * 6


# --- XDS.b / ebRS ------------------------------------------------------------------------------------

RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
PNR = f"""<xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"
    xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
  <lcm:SubmitObjectsRequest><rim:RegistryObjectList>
    <rim:ExtrinsicObject id="Document01" mimeType="text/xml" objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
      <rim:Name><rim:LocalizedString xml:lang="fr-FR" charset="UTF-8" value="Lettre"/></rim:Name>
    </rim:ExtrinsicObject>
  </rim:RegistryObjectList></lcm:SubmitObjectsRequest>
  <xdsb:Document id="Document01">{{body}}</xdsb:Document>
</xdsb:ProvideAndRegisterDocumentSetRequest>"""


def test_xds_request_valid_with_xml_lang_resolved_locally():
    assert validate.xds_request_errors(PNR.replace("{body}", "AAAA").encode()) == []


def test_xds_request_errors_are_reported():
    xml = PNR.replace("{body}", "AAAA").replace('ExtrinsicObject id="Document01"', "ExtrinsicObject").replace('xml:lang="fr-FR"', 'xml:lang="fr FR!"')
    errors = validate.xds_request_errors(xml.encode())
    assert len(errors) >= 2 and any("'id' is required" in e for e in errors)
    assert any("lang" in e for e in errors)


def test_xds_request_accepts_an_element_inside_an_envelope():
    from lxml import etree

    envelope = etree.fromstring(
        f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        f'{PNR.replace("{body}", "AAAA")}</s:Body></s:Envelope>'.encode()
    )
    assert validate.xds_request_errors(envelope[0][0]) == []


def test_registry_response_and_unexpected_root():
    ok = f'<rs:RegistryResponse xmlns:rs="{RS}" status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>'
    assert validate.xds_request_errors(ok.encode()) == []
    assert validate.xds_request_errors(f'<rs:RegistryResponse xmlns:rs="{RS}"/>'.encode())
    assert validate.xds_request_errors(b"<foo/>") == ["unexpected root element foo"]


# --- SAML ----------------------------------------------------------------------------------------------

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


def test_saml_assertion_schema():
    ok = (f'<saml:Assertion xmlns:saml="{SAML}" ID="_a1" Version="2.0" IssueInstant="2026-11-20T13:30:00Z">'
          "<saml:Issuer>CN=test</saml:Issuer></saml:Assertion>")
    assert validate.saml_assertion_errors(ok.encode()) == []
    errors = validate.saml_assertion_errors(ok.replace(' ID="_a1"', "").encode())
    assert any("ID" in e for e in errors)


def test_body_shrinking_keeps_the_schematron_verdict(example):
    """cda_errors hands Saxon a short placeholder for the base64 body: same answers as the full body."""
    for xml in (example, without(example, r'<birthTime value="19790328"/>')):
        full = validate.schematron_errors(validate.parse_untrusted(xml))
        shrunk = validate.parse_untrusted(xml)
        validate._shrink_body(shrunk)
        assert b"AAAA</text>" in etree.tostring(shrunk)
        assert validate.schematron_errors(shrunk) == full


def test_saml_attribute_values_typed_hl7_ce_are_validated():
    """VIHF role / purposeofuse values are HL7 CE elements: the type resolves and is checked."""
    def assertion(value: str) -> bytes:
        return (f'<saml:Assertion xmlns:saml="{SAML}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'ID="_a1" Version="2.0" IssueInstant="2026-11-20T13:30:00Z"><saml:Issuer>CN=test</saml:Issuer>'
                '<saml:AttributeStatement><saml:Attribute Name="urn:oasis:names:tc:xspa:1.0:subject:purposeofuse">'
                f'<saml:AttributeValue>{value}</saml:AttributeValue></saml:Attribute></saml:AttributeStatement>'
                "</saml:Assertion>").encode()
    ce = '<PurposeOfUse xmlns="urn:hl7-org:v3" xsi:type="CE" code="normal" codeSystem="1.2.250.1.213.1.1.4.248"/>'
    assert validate.saml_assertion_errors(assertion(ce)) == []
    wrong = ce.replace('codeSystem="1.2.250.1.213.1.1.4.248"', 'codeSystem="not an oid"')
    assert validate.saml_assertion_errors(assertion(wrong))


def test_the_shared_cda_and_saml_schema_refuses_a_saml_root_as_a_cda():
    assertion = (f'<saml:Assertion xmlns:saml="{SAML}" ID="_a1" Version="2.0" IssueInstant="2026-11-20T13:30:00Z">'
                 "<saml:Issuer>CN=test</saml:Issuer></saml:Assertion>").encode()
    assert validate.saml_assertion_errors(assertion) == []
    assert validate.cda_errors(assertion, schematron=False) == ["XSD /: the root element is Assertion, not ClinicalDocument"]
