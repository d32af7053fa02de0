"""The VIHF against the DMP operator's own example (GIE SESAM-Vitale, `VIHF_INDIRECTE_signe.xml`, the
indirect authentication we use): every attribute it carries and the same skeleton; the professional's
national id as NameID; profession and savoir-faire as role; the settings that stay unknown."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from lxml import etree

from connector import config
from connector.actions.check import run_checks
from connector.resources import schemas_dir
from connector.trust.roles import RoleError, subject_roles
from connector.trust.vihf import SAML_NS, build_vihf, verify_vihf
from connector.trust.xmlsig import DS_NS, SAFE_PARSER, XSI_NS
from connector.payload.errors import PayloadError
from connector.prepare import vihf_subject
from conftest import make_document, make_settings, settings_dict

GIE_VIHF = schemas_dir() / "gie-dmp-package/vihf/VIHF_INDIRECTE_signe.xml"
HL7_NS = "urn:hl7-org:v3"
NS = {"saml": SAML_NS, "ds": DS_NS, "hl7": HL7_NS}
INS_CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
XSI_TYPE = f"{{{XSI_NS}}}type"


@pytest.fixture(scope="module")
def gie():
    return etree.parse(str(GIE_VIHF), SAFE_PARSER).getroot()


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("settings"))


def _build(credential, vihf_settings, **overrides):
    kw = dict(finess_geo="0B0999998", facility_type="SA01", patient_ins_cx=INS_CX, subject_rpps="10001234567",
              subject_specialty="G15_10/SM26", issue_instant=dt.datetime(2026, 11, 20, 1, 2, 3, tzinfo=dt.timezone.utc))
    kw.update(overrides)
    return build_vihf(credential, vihf_settings, **kw)


@pytest.fixture(scope="module")
def ours(sign_credential, settings):
    """Our VIHF with the configuration's defaults (the test configuration sets only the responsible
    professional and a homologation number)."""
    return _build(sign_credential, settings.vihf)


def _local(element) -> str:
    return etree.QName(element).localname


def _attributes(assertion) -> dict[str, etree._Element]:
    return {a.get("Name"): a for a in assertion.iterfind("saml:AttributeStatement/saml:Attribute", NS)}


def _roles(assertion) -> list[etree._Element]:
    return assertion.findall(
        "saml:AttributeStatement/saml:Attribute[@Name='urn:oasis:names:tc:xacml:2.0:subject:role']"
        "/saml:AttributeValue/hl7:Role", NS)


def _fixed(text: str) -> str:
    """The example's Role displayNames are UTF-8 read as Latin-1 once ("MÃ©decin"); the rest is right."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return text


# --- the golden comparison -------------------------------------------------------------------------


def test_every_attribute_of_the_gie_example_is_in_ours(gie, ours):
    missing = set(_attributes(gie)) - set(_attributes(ours))
    assert not missing, f"attributes of the GIE example missing from our VIHF: {sorted(missing)}"


def test_skeleton_is_the_gie_example_s(gie, ours):
    # Issuer, then the enveloped signature, Subject, AuthnStatement, AttributeStatement; no Conditions.
    assert [_local(c) for c in ours] == [_local(c) for c in gie]
    assert set(ours.attrib) == set(gie.attrib) == {"ID", "IssueInstant", "Version"}
    assert ours.get("Version") == gie.get("Version") == "2.0"
    issuer, gie_issuer = ours.find("saml:Issuer", NS), gie.find("saml:Issuer", NS)
    assert dict(issuer.attrib) == dict(gie_issuer.attrib)  # Format X509SubjectName
    subject, gie_subject = ours.find("saml:Subject", NS), gie.find("saml:Subject", NS)
    assert [(_local(c), dict(c.attrib)) for c in subject] == [(_local(c), dict(c.attrib)) for c in gie_subject]
    authn, gie_authn = ours.find("saml:AuthnStatement", NS), gie.find("saml:AuthnStatement", NS)
    assert set(authn.attrib) == set(gie_authn.attrib) == {"AuthnInstant"}
    assert [_local(e) for e in authn.iter()] == [_local(e) for e in gie_authn.iter()]


def test_instants_are_written_as_in_the_gie_example(gie, ours):
    # UTC with milliseconds and Z: 2019-06-26T08:46:06.839Z
    instant = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
    for assertion in (gie, ours):
        assert instant.fullmatch(assertion.get("IssueInstant"))
        assert instant.fullmatch(assertion.find("saml:AuthnStatement", NS).get("AuthnInstant"))
    assert ours.get("IssueInstant") == "2026-11-20T01:02:03.000Z"


def test_digest_is_a_setting(sign_credential, tmp_path, pki):
    settings = make_settings(tmp_path, vihf={"digest": "sha256"})
    assertion = _build(sign_credential, settings.vihf)
    assert verify_vihf(assertion, pki.ca_cert.read_bytes()).name_id == "810001234567"
    signature = assertion[1]
    assert signature.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith("rsa-sha256")
    assert signature.find("ds:SignedInfo/ds:Reference/ds:DigestMethod", NS).get("Algorithm").endswith("sha256")


def test_signature_is_placed_and_built_as_in_the_gie_example(gie, ours):
    signature, gie_signature = ours[1], gie[1]
    assert signature.tag == gie_signature.tag == f"{{{DS_NS}}}Signature"
    for path in ("ds:SignedInfo/ds:CanonicalizationMethod", "ds:SignedInfo/ds:Reference/ds:Transforms",
                 "ds:SignedInfo/ds:SignatureMethod", "ds:SignedInfo/ds:Reference/ds:DigestMethod"):
        ours_algorithms = [e.get("Algorithm") for e in signature.find(path, NS).iter() if e.get("Algorithm")]
        gie_algorithms = [e.get("Algorithm") for e in gie_signature.find(path, NS).iter() if e.get("Algorithm")]
        # exc-c14n; enveloped-signature then exc-c14n; rsa-sha1 and sha1 (`vihf.digest` default)
        assert ours_algorithms == gie_algorithms
    for assertion, sig in ((ours, signature), (gie, gie_signature)):
        assert sig.find("ds:SignedInfo/ds:Reference", NS).get("URI") == "#" + assertion.get("ID")
        assert sig.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS) is not None


def test_attribute_values_are_typed_as_in_the_gie_example(gie, ours):
    ours_attributes = _attributes(ours)
    for name, gie_attribute in _attributes(gie).items():
        gie_values = gie_attribute.findall("saml:AttributeValue", NS)
        values = ours_attributes[name].findall("saml:AttributeValue", NS)
        assert len(values) >= len(gie_values), name
        for value, gie_value in zip(values, gie_values):
            assert value.get(XSI_TYPE) == gie_value.get(XSI_TYPE), name  # xs:string on the plain values
            assert [c.tag for c in value] == [c.tag for c in gie_value], name  # hl7:Role, hl7:PurposeOfUse
            for child, gie_child in zip(value, gie_value):
                assert child.get(XSI_TYPE) == gie_child.get(XSI_TYPE) == "CE"
                assert set(gie_child.attrib) <= set(child.attrib), name


def test_values_fixed_by_the_rules_are_the_gie_example_s(gie, ours):
    def text(assertion, name):
        return _attributes(assertion)[name].findtext("saml:AttributeValue", namespaces=NS)

    for name in ("VIHF_Version", "Authentification_mode", "Ressource_URN"):
        assert text(ours, name) == text(gie, name), name
    purpose = "saml:AttributeStatement/saml:Attribute/saml:AttributeValue/hl7:PurposeOfUse"
    assert dict(ours.find(purpose, NS).attrib) == {k: _fixed(v) for k, v in gie.find(purpose, NS).attrib.items()}
    # The role of a GP (G15_10/SM26) is exactly the example's: profession 10, savoir-faire SM26.
    assert [dict(r.attrib) for r in _roles(ours)] == [
        {k: _fixed(v) for k, v in r.attrib.items()} for r in _roles(gie)]
    # Formats: the example's demo values follow the same rules as ours.
    formats = {
        "Secteur_Activite": r"SA[0-9]{2}\^1\.2\.250\.1\.71\.4\.2\.4",
        "urn:oasis:names:tc:xacml:2.0:resource:resource-id": r"[0-9]{15}\^\^\^&1\.2\.250\.1\.213\.1\.4\.1[01]&ISO\^NH",
    }
    for name, pattern in formats.items():
        assert re.fullmatch(pattern, text(gie, name)) and re.fullmatch(pattern, text(ours, name)), name


def test_name_id_is_the_national_id_as_in_the_gie_example(gie, ours, sign_credential, settings):
    assert re.fullmatch("8[0-9]{11}", gie.findtext("saml:Subject/saml:NameID", namespaces=NS))
    assert ours.findtext("saml:Subject/saml:NameID", namespaces=NS) == "810001234567"
    other = _build(sign_credential, settings.vihf, subject_rpps="10009876543", subject_specialty="G15_10/SM44")
    assert other.findtext("saml:Subject/saml:NameID", namespaces=NS) == "810009876543"


def test_our_vihf_still_verifies(ours, pki):
    info = verify_vihf(ours, pki.ca_cert.read_bytes())
    assert info.name_id == "810001234567"
    assert [(v.code, v.code_system) for v in info.values["urn:oasis:names:tc:xacml:2.0:subject:role"]] == [
        ("10", "1.2.250.1.71.1.2.7"), ("SM26", "1.2.250.1.71.4.2.5")]


# --- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("specialty, expected", [
    ("G15_10/SM26", [("10", "1.2.250.1.71.1.2.7", "Médecin"),
                     ("SM26", "1.2.250.1.71.4.2.5", "Qualifié en Médecine Générale (SM)")]),
    ("G15_10/SM44", [("10", "1.2.250.1.71.1.2.7", "Médecin"), ("SM44", "1.2.250.1.71.4.2.5", None)]),
    ("G15_21/H", [("21", "1.2.250.1.71.1.2.7", "Pharmacien"),
                  ("H", "1.2.250.1.71.4.2.6", "Pharmacien d'établissement de santé")]),
    ("G15_60", [("60", "1.2.250.1.71.1.2.7", "Infirmier")]),  # no second value outside physicians/pharmacists
    ("G15_50", [("50", "1.2.250.1.71.1.2.7", "Sage-Femme")]),
])
def test_role_is_the_profession_and_for_physicians_and_pharmacists_the_savoir_faire(specialty, expected):
    roles = subject_roles(specialty)
    assert [(r.code, r.code_system) for r in roles] == [(c, s) for c, s, _ in expected]
    for role, (_, _, display) in zip(roles, expected):
        if display is not None:
            assert role.display == display


@pytest.mark.parametrize("specialty, reason", [
    ("G15_10", "savoir-faire"),  # a physician without savoir-faire
    ("G15_21/FQ01", "CNOP sub-section"),
    ("SECRETARIAT_MEDICAL", "health profession"),
    ("G15_10/NOPE", "not a JDV_J01"),
    (None, "no specialty"),
])
def test_a_specialty_without_the_role_the_dmp_requires_is_refused(specialty, reason, sign_credential, settings):
    with pytest.raises(RoleError, match=reason):
        subject_roles(specialty)
    with pytest.raises(ValueError, match=reason):
        _build(sign_credential, settings.vihf, subject_specialty=specialty)


def test_vihf_of_a_pharmacist_carries_the_cnop_sub_section(sign_credential, settings):
    roles = _roles(_build(sign_credential, settings.vihf, subject_specialty="G15_21/H"))
    assert [(r.get("code"), r.get("codeSystem")) for r in roles] == [("21", "1.2.250.1.71.1.2.7"),
                                                                      ("H", "1.2.250.1.71.4.2.6")]


def test_subject_is_an_author_whose_specialty_gives_the_role_else_the_responsible(tmp_path):
    settings = make_settings(tmp_path, vihf={"responsible_rpps": "10007654321", "responsible_specialty": "G15_10/SM40",
                                             "generic_rpps": ["19999999999"]})
    gp = make_document(author_rpps="10001234567", author_specialty_code="G15_10/SM26")
    no_specialty = make_document(author_rpps="10009876543", author_specialty_code=None)
    no_savoir_faire = make_document(author_rpps="10009876543", author_specialty_code="G15_10")
    generic = make_document(author_rpps="19999999999", author_specialty_code="G15_10/SM26")
    responsible = {"subject_rpps": "10007654321", "subject_specialty": "G15_10/SM40"}
    assert vihf_subject(settings, [no_specialty, gp]) == {"subject_rpps": "10001234567",
                                                          "subject_specialty": "G15_10/SM26"}
    assert vihf_subject(settings, [no_specialty, no_savoir_faire, generic]) == responsible
    without = make_settings(tmp_path, vihf={"responsible_rpps": None, "responsible_specialty": None})
    with pytest.raises(PayloadError, match="vihf.responsible_rpps"):
        vihf_subject(without, [no_savoir_faire])


# --- configuration ---------------------------------------------------------------------------------


def _config(tmp_path, **vihf):
    data = settings_dict(tmp_path)
    data["vihf"].update(vihf)
    return data


def test_production_without_homologation_number_is_a_configuration_error(tmp_path):
    data = _config(tmp_path, lps_id_homologation_dmp="")
    data["dmp"]["environment"] = "production"
    with pytest.raises(config.ConfigError, match="vihf.lps_id_homologation_dmp"):
        config.from_dict(data, base=tmp_path)
    data["vihf"]["lps_id_homologation_dmp"] = "HOMOLOGATION-42"
    assert config.from_dict(data, base=tmp_path).vihf.lps_id_homologation_dmp == "HOMOLOGATION-42"


def test_check_shows_the_homologation_number(tmp_path):
    numbered = run_checks(make_settings(tmp_path, vihf={"lps_id_homologation_dmp": "HOMOLOGATION-42"}))
    assert [(c.level, c.message) for c in numbered if c.name == "vihf"] == [
        ("ok", "LPS_ID_HOMOLOGATION_DMP = HOMOLOGATION-42")]
    empty = run_checks(make_settings(tmp_path, vihf={"lps_id_homologation_dmp": ""}))
    (check,) = [c for c in empty if c.name == "vihf"]
    assert check.level == "warning" and "vihf.lps_id_homologation_dmp" in check.message


def test_responsible_specialty_must_give_the_role(tmp_path):
    with pytest.raises(config.ConfigError, match="vihf.responsible_specialty.*savoir-faire"):
        config.from_dict(_config(tmp_path, responsible_specialty="G15_10"), base=tmp_path)
    data = _config(tmp_path)
    del data["vihf"]["responsible_specialty"]
    with pytest.raises(config.ConfigError, match="vihf.responsible_specialty"):
        config.from_dict(data, base=tmp_path)


def test_authentication_mode_attribute_name_is_a_setting(sign_credential, tmp_path):
    vihf_settings = config.from_dict(_config(tmp_path), base=tmp_path).vihf
    assert vihf_settings.authentification_mode_attribute == "Authentification_mode"  # as every GIE example
    other = dataclasses.replace(vihf_settings, authentification_mode_attribute="Authentification_Mode")
    names = set(_attributes(_build(sign_credential, other)))
    assert "Authentification_Mode" in names and "Authentification_mode" not in names
    with pytest.raises(config.ConfigError, match="vihf.authentification_mode_attribute"):
        config.from_dict(_config(tmp_path, authentification_mode_attribute="AuthMode"), base=tmp_path)


def test_subject_id_and_lps_id_defaults(tmp_path):
    vihf_settings = config.from_dict(_config(tmp_path), base=tmp_path).vihf
    # ANS, automated process: "Nom du logiciel, Nom du modèle et Service".
    assert vihf_settings.subject_id == "dmp-connector, alimentation automatique du DMP, Centre Hospitalier de Test"
    assert vihf_settings.lps_id == "1.2.250.1.999.42"  # the sending system's OID (structure.source_id)
