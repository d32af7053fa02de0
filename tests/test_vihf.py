"""The VIHF token: every attribute of the notes §2.2, schema-valid, verifiable by signxml and libxmlsec1."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from lxml import etree
from independent_verifier import xmlsec_verify

from connector.config import CertificateSettings, VihfSettings
from connector.resources import ans_kit, schemas_dir
from connector.trust.certs import load_credential
from connector.trust.pki import issue_bad_p12
from connector.trust.vihf import SAML_NS, CodedValue, VihfError, build_vihf, verify_vihf
from connector.trust.xmlsig import DS_NS

INS_CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
VIHF = VihfSettings(lps_id_homologation_dmp="TEST-HOMOLOGATION", lps_id="INSTALL-42", generic_rpps=("19999999999",))
NS = {"saml": SAML_NS, "ds": DS_NS}


def _build(credential, **overrides):
    kw = dict(finess_geo="0B0999998", facility_type="SA01", patient_ins_cx=INS_CX, subject_rpps="10001234567",
              subject_specialty="G15_10/SM26", issue_instant=dt.datetime(2026, 11, 20, 1, 2, 3, tzinfo=dt.timezone.utc))
    kw.update(overrides)
    return build_vihf(credential, kw.pop("vihf", VIHF), **kw)


@pytest.fixture(scope="module")
def assertion_schema():
    """SAML assertion XSD (+ xmldsig next to it), and HL7 v3 types for the Role/PurposeOfUse xsi:type="CE"."""
    saml = schemas_dir() / "SAML-Toolkits-python3-saml/src/onelogin/saml2/schemas/saml-schema-assertion-2.0.xsd"
    cda = ans_kit() / "infrastructure/cda/CDA_extended.xsd"
    wrapper = f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
      <xs:import namespace="{SAML_NS}" schemaLocation="{saml.as_uri()}"/>
      <xs:import namespace="urn:hl7-org:v3" schemaLocation="{cda.as_uri()}"/>
    </xs:schema>"""
    return etree.XMLSchema(etree.fromstring(wrapper))


@pytest.fixture(scope="module")
def vihf(sign_credential):
    return _build(sign_credential)


def _attributes(element):
    return {a.get("Name"): a for a in element.iterfind("saml:AttributeStatement/saml:Attribute", NS)}


def test_assertion_skeleton(vihf, sign_credential):
    assert vihf.tag == f"{{{SAML_NS}}}Assertion"
    assert vihf.get("Version") == "2.0" and vihf.get("IssueInstant") == "2026-11-20T01:02:03.000Z"
    assert vihf.get("ID").startswith("_")
    issuer, signature = vihf[0], vihf[1]
    assert issuer.tag == f"{{{SAML_NS}}}Issuer" and issuer.text == sign_credential.subject_dn
    assert issuer.get("Format") == "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
    assert signature.tag == f"{{{DS_NS}}}Signature"  # right after Issuer
    assert vihf.findtext("saml:Subject/saml:NameID", namespaces=NS) == "810001234567"  # national id: 8 + RPPS
    authn = vihf.find("saml:AuthnStatement", NS)
    assert authn.get("AuthnInstant") == "2026-11-20T01:02:03.000Z"
    assert authn.findtext("saml:AuthnContext/saml:AuthnContextClassRef", namespaces=NS) == VIHF.authn_context


def test_signature_algorithms_follow_the_gie_example(vihf):
    sig = vihf.find("ds:Signature", NS)
    assert sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    # rsa-sha1 and sha1 as every GIE example VIHF (`vihf.digest`; the ANS mapping's example has sha256)
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm") == "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    ref = sig.find("ds:SignedInfo/ds:Reference", NS)
    assert ref.get("URI") == "#" + vihf.get("ID")
    transforms = ref.findall("ds:Transforms/ds:Transform", NS)
    assert [t.get("Algorithm") for t in transforms] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature", "http://www.w3.org/2001/10/xml-exc-c14n#"]
    assert transforms[1][0].get("PrefixList") == "ds saml #default xsi"
    assert ref.find("ds:DigestMethod", NS).get("Algorithm") == "http://www.w3.org/2000/09/xmldsig#sha1"
    assert sig.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS) is not None


def test_every_attribute_of_the_notes(vihf):
    attrs = _attributes(vihf)
    text = {name: a.findtext("saml:AttributeValue", namespaces=NS) for name, a in attrs.items()}
    assert text["VIHF_Version"] == "3.0"
    assert text["Authentification_mode"] == "INDIRECTE"
    assert text["Identifiant_Structure"] == "10B0999998"
    assert text["Secteur_Activite"] == "SA01^1.2.250.1.71.4.2.4"
    assert text["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == INS_CX
    assert text["Ressource_URN"] == "urn:dmp"
    assert text["urn:oasis:names:tc:xspa:1.0:subject:subject-id"] == "dmp-connector, alimentation automatique du DMP"
    assert text["LPS_Nom"] == "dmp-connector" and text["LPS_Version"] == "0.1.0"
    assert text["LPS_ID_HOMOLOGATION_DMP"] == "TEST-HOMOLOGATION" and text["LPS_ID"] == "INSTALL-42"
    xsi_type = "{http://www.w3.org/2001/XMLSchema-instance}type"
    role = attrs["urn:oasis:names:tc:xacml:2.0:subject:role"].find("saml:AttributeValue/{urn:hl7-org:v3}Role", NS)
    assert (role.get("code"), role.get("codeSystem"), role.get("displayName"), role.get(xsi_type)) == (
        "10", "1.2.250.1.71.1.2.7", "Médecin", "CE")
    purpose = attrs["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"].find(
        "saml:AttributeValue/{urn:hl7-org:v3}PurposeOfUse", NS)
    assert (purpose.get("code"), purpose.get("codeSystem"), purpose.get(xsi_type)) == (
        "normal", "1.2.250.1.213.1.1.4.248", "CE")
    assert len(attrs) == 13


def test_lps_id_is_left_out_when_not_configured(sign_credential):
    element = _build(sign_credential, vihf=dataclasses.replace(VIHF, lps_id=""))
    assert "LPS_ID" not in _attributes(element)


def test_schema_valid(vihf, assertion_schema):
    assert assertion_schema.validate(vihf), assertion_schema.error_log


def test_verifies_with_signxml_and_returns_the_signed_content(vihf, pki, sign_credential):
    info = verify_vihf(vihf, pki.ca_cert.read_bytes())
    assert info.name_id == "810001234567"
    assert info.issuer == sign_credential.subject_dn
    assert info.signer == sign_credential.certificate
    assert info.assertion_id == vihf.get("ID")
    assert info.attributes["Identifiant_Structure"] == "10B0999998"
    assert info.attributes["urn:oasis:names:tc:xacml:2.0:subject:role"] == CodedValue(
        "10", "1.2.250.1.71.1.2.7", None, "Médecin")


def test_verifies_with_xmlsec1(vihf, pki):
    result = xmlsec_verify(etree.tostring(vihf), pki.ca_cert, id_attribute="ID")  # SAML's ID attribute
    assert result.ok, result.error


def test_verifies_inside_a_soap_header(vihf, pki):
    wsse = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
    envelope = etree.Element("{http://www.w3.org/2003/05/soap-envelope}Envelope")
    security = etree.SubElement(etree.SubElement(envelope, "{http://www.w3.org/2003/05/soap-envelope}Header"),
                                f"{{{wsse}}}Security")
    security.append(etree.fromstring(etree.tostring(vihf)))
    received = etree.fromstring(etree.tostring(envelope))
    assertion = received.find(f".//{{{SAML_NS}}}Assertion")
    assert verify_vihf(assertion, pki.ca_cert.read_bytes()).name_id == "810001234567"


def test_tampered_attribute_breaks_both_verifiers(vihf, pki):
    tampered = etree.fromstring(etree.tostring(vihf))
    value = _attributes(tampered)["Identifiant_Structure"].find("saml:AttributeValue", NS)
    value.text = "10B0999997"
    with pytest.raises(VihfError, match="does not verify"):
        verify_vihf(tampered, pki.ca_cert.read_bytes())
    assert not xmlsec_verify(etree.tostring(tampered), pki.ca_cert, id_attribute="ID").ok


def test_signer_from_another_ca_is_refused(pki, tmp_path):
    p12, pw = issue_bad_p12(pki, tmp_path / "other.p12", "sign", other_ca=True)
    element = _build(load_credential(CertificateSettings(p12=p12, password_file=pw)))
    with pytest.raises(VihfError, match="not trusted"):
        verify_vihf(element, pki.ca_cert.read_bytes())
    assert not xmlsec_verify(etree.tostring(element), pki.ca_cert, id_attribute="ID").ok


def test_unsigned_assertion_is_refused(vihf, pki):
    stripped = etree.fromstring(etree.tostring(vihf))
    stripped.remove(stripped.find("ds:Signature", NS))
    with pytest.raises(VihfError, match="not signed"):
        verify_vihf(stripped, pki.ca_cert.read_bytes())


def test_generic_or_malformed_rpps_is_refused(sign_credential):
    with pytest.raises(ValueError, match="generic_rpps"):
        _build(sign_credential, subject_rpps="19999999999")
    for bad in ("1000123456", "8100012345678", "1000123456X", ""):
        with pytest.raises(ValueError, match="11 digits"):
            _build(sign_credential, subject_rpps=bad)


def test_signing_reuses_the_loaded_key(sign_credential, monkeypatch):
    from connector.trust import certs

    monkeypatch.setattr(certs.pkcs12, "load_key_and_certificates", lambda *a: pytest.fail("key reloaded"))
    ids = {_build(sign_credential).get("ID") for _ in range(20)}
    assert len(ids) == 20  # a fresh assertion ID each time
