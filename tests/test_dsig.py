"""The submission-set signature: XAdES + IHE manifest, checked by our verifier and by libxmlsec1."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from lxml import etree
from independent_verifier import with_submission_set, xmlsec_verify

from connector.config import CertificateSettings
from connector.payload import validate
from connector.resources import schemas_dir
from connector.trust.certs import load_credential
from connector.trust.dsig import (
    XADES_111,
    XADES_132,
    SignatureError,
    sign_submission_set,
    verify_submission_set_signature,
)
from connector.trust.pki import issue_bad_p12
from connector.trust.certs import certificate_digest
from connector.trust.xmlsig import DS_NS, XML_DECLARATION, CanonicalDocument, b64

SS_UID = "1.2.250.1.999.42.2.7"
SIG_ID = "S1.2.250.1.999.42.4.7"
DOC1, DOC2 = "1.2.250.1.999.42.1.1", "1.2.250.1.999.42.1.2"
CDA1 = b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><!-- v1 --><id root="1.2.250.1.999.42.1.1"/><title>Lettre</title></ClinicalDocument>\n'
CDA2 = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.250.1.999.42.1.2"/><title>CR</title></ClinicalDocument>'
DOCS = {DOC1: CDA1, DOC2: CDA2}
WHEN = dt.datetime(2026, 11, 21, 2, 0, tzinfo=dt.timezone.utc)
NS = {"ds": DS_NS}
PROFILES = [("sha1", XADES_111), ("sha256", XADES_132)]
TD21 = schemas_dir() / "gie-dmp-package/messages/TD2.1-SignatureXades.xml"  # the GIE's example signature


def _sign(credential, digest="sha1", xades=XADES_111, documents=DOCS):
    return sign_submission_set(credential, submission_set_uid=SS_UID, documents=list(documents.items()),
                               signature_id=SIG_ID, digest=digest, xades_namespace=xades, signing_time=WHEN)


@pytest.mark.parametrize("digest,xades", PROFILES)
def test_shape_follows_the_dmp_clients(sign_credential, digest, xades):
    sig = etree.fromstring(_sign(sign_credential, digest, xades))
    assert sig.tag == f"{{{DS_NS}}}Signature" and sig.get("Id") == SIG_ID
    assert sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm") == \
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith(f"rsa-{digest}")
    refs = sig.findall("ds:SignedInfo/ds:Reference", NS)
    assert [(r.get("URI"), r.get("Type")) for r in refs] == [
        ("#IHEManifest", "http://www.w3.org/2000/09/xmldsig#Manifest"),
        (f"#{SIG_ID}-SignedProperties",
         xades + "SignedProperties" if xades == XADES_111 else "http://uri.etsi.org/01903#SignedProperties"),
    ]
    manifest = sig.find("ds:Object/ds:Manifest[@Id='IHEManifest']", NS)
    uris = [r.get("URI") for r in manifest.findall("ds:Reference", NS)]
    assert uris == [f"urn:oid:{SS_UID}", f"urn:oid:{DOC1}", f"urn:oid:{DOC2}"]
    assert manifest.findtext("ds:Reference/ds:DigestValue", namespaces=NS) == "AA=="
    prop = sig.find("ds:Object/ds:SignatureProperties/ds:SignatureProperty", NS)
    assert (prop.get("Id"), prop.get("Target"), prop.text) == ("purposeOfSignature", f"#{SIG_ID}",
                                                              "1.2.840.10065.1.12.1.14")
    qp = sig.find(f"ds:Object/{{{xades}}}QualifyingProperties", NS)
    assert qp.get("Target") == f"#{SIG_ID}"
    ssp = qp.find(f"{{{xades}}}SignedProperties/{{{xades}}}SignedSignatureProperties")
    assert ssp.findtext(f"{{{xades}}}SigningTime") == "2026-11-21T02:00:00Z"
    assert ssp.find(f"{{{xades}}}SignaturePolicyIdentifier/{{{xades}}}SignaturePolicyImplied") is not None
    serial = ssp.findtext(f"{{{xades}}}SigningCertificate/{{{xades}}}Cert/{{{xades}}}IssuerSerial/ds:X509SerialNumber",
                          namespaces=NS)
    assert serial == str(sign_credential.serial_number)


def _independent(xml, pki, documents=DOCS):
    return xmlsec_verify(xml, pki.ca_cert, documents=with_submission_set(SS_UID, documents))


@pytest.mark.parametrize("digest,xades", PROFILES)
def test_verifies_with_our_verifier_and_xmlsec1(sign_credential, pki, digest, xades):
    xml = _sign(sign_credential, digest, xades)
    info = verify_submission_set_signature(xml, DOCS, ca_cert_pem=pki.ca_cert.read_bytes())
    assert (info.submission_set_uid, info.document_uids, info.digest, info.xades_namespace) == (
        SS_UID, (DOC1, DOC2), digest, xades)
    assert info.signing_time == WHEN and info.signer == sign_credential.certificate
    result = _independent(xml, pki)
    assert result.ok, result.error
    # n of n+1 manifest references: every document's, not the submission set's "AA==" placeholder
    assert [uri for uri, _ in result.manifest] == [f"urn:oid:{SS_UID}", f"urn:oid:{DOC1}", f"urn:oid:{DOC2}"]
    assert result.manifest_ok() == [f"urn:oid:{DOC1}", f"urn:oid:{DOC2}"]


def test_xmlsec1_finds_one_manifest_reference_fewer_after_a_cda_byte_changes(sign_credential, pki):
    xml = _sign(sign_credential)
    result = _independent(xml, pki, {DOC1: CDA1, DOC2: CDA2.replace(b"<title>CR<", b"<title>CX<")})
    assert result.ok, result.error  # SignedInfo still verifies: the manifest's outcome is the application's
    assert result.manifest_ok() == [f"urn:oid:{DOC1}"]


def test_a_changed_cda_byte_fails_naming_the_document(sign_credential, pki):
    xml = _sign(sign_credential)
    changed = {DOC1: CDA1, DOC2: CDA2.replace(b"<title>CR<", b"<title>CX<")}
    with pytest.raises(SignatureError, match=f"urn:oid:{DOC2}: digest mismatch"):
        verify_submission_set_signature(xml, changed, ca_cert_pem=pki.ca_cert.read_bytes())


def test_digest_is_over_the_canonical_form_with_comments(sign_credential, pki):
    xml = _sign(sign_credential)
    same_canonical = {DOC1: CDA1.replace(b'<id root="1.2.250.1.999.42.1.1"/>', b"<id root='1.2.250.1.999.42.1.1' ></id>"),
                      DOC2: CDA2}
    verify_submission_set_signature(xml, same_canonical, ca_cert_pem=pki.ca_cert.read_bytes())
    other_comment = {DOC1: CDA1.replace(b"<!-- v1 -->", b"<!-- v2 -->"), DOC2: CDA2}
    with pytest.raises(SignatureError, match=DOC1):
        verify_submission_set_signature(xml, other_comment, ca_cert_pem=pki.ca_cert.read_bytes())


def test_documents_written_canonical_are_digested_as_they_are(sign_credential, pki):
    """A CanonicalDocument (the CDA builder's output) is digested without parse or c14n, to the same value;
    the verifier's shortcut for such bytes still refuses a changed byte, and a non-canonical spelling of
    the same document still verifies the long way."""
    canonical = CanonicalDocument(XML_DECLARATION + etree.tostring(etree.fromstring(CDA2), method="c14n"))
    assert b"<id root=\"1.2.250.1.999.42.1.2\"></id>" in canonical
    assert _sign(sign_credential, documents={DOC2: canonical}) == _sign(sign_credential, documents={DOC2: CDA2})
    xml = _sign(sign_credential, documents={DOC2: canonical})
    ca = pki.ca_cert.read_bytes()
    verify_submission_set_signature(xml, {DOC2: bytes(canonical)}, ca_cert_pem=ca)
    verify_submission_set_signature(xml, {DOC2: XML_DECLARATION + CDA2.replace(b"/>", b" />")}, ca_cert_pem=ca)
    with pytest.raises(SignatureError, match=f"urn:oid:{DOC2}: digest mismatch"):
        verify_submission_set_signature(xml, {DOC2: bytes(canonical).replace(b">CR<", b">CX<")}, ca_cert_pem=ca)


def test_every_document_must_be_referenced_and_provided(sign_credential, pki):
    xml = _sign(sign_credential, documents={DOC1: CDA1})
    with pytest.raises(SignatureError, match=f"document {DOC2} is not referenced"):
        verify_submission_set_signature(xml, DOCS, ca_cert_pem=pki.ca_cert.read_bytes())
    xml = _sign(sign_credential)
    with pytest.raises(SignatureError, match=f"urn:oid:{DOC2}: no such document"):
        verify_submission_set_signature(xml, {DOC1: CDA1}, ca_cert_pem=pki.ca_cert.read_bytes())


def test_a_tampered_manifest_breaks_both_verifiers(sign_credential, pki):
    sig = etree.fromstring(_sign(sign_credential))
    sig.find("ds:Object/ds:Manifest/ds:Reference", NS).set("URI", "urn:oid:1.2.250.1.999.42.2.8")
    xml = etree.tostring(sig)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_submission_set_signature(xml, DOCS, ca_cert_pem=pki.ca_cert.read_bytes())
    result = _independent(xml, pki, {**DOCS, "1.2.250.1.999.42.2.8": b""})  # dereferenceable: fails on the digest
    assert not result.ok and result.error.startswith("VerificationError"), result.error


def test_a_signature_by_another_ca_fails_the_chain_check(pki, tmp_path):
    p12, pw = issue_bad_p12(pki, tmp_path / "other.p12", "sign", other_ca=True)
    xml = _sign(load_credential(CertificateSettings(p12=p12, password_file=pw)))
    with pytest.raises(SignatureError, match="not trusted"):
        verify_submission_set_signature(xml, DOCS, ca_cert_pem=pki.ca_cert.read_bytes())
    assert not _independent(xml, pki).ok
    verify_submission_set_signature(xml, DOCS, ca_cert_pem=None)  # the signature itself is sound


def test_sha1_can_be_refused(sign_credential, pki):
    xml = _sign(sign_credential, "sha1")
    with pytest.raises(SignatureError, match="RSA_SHA1 forbidden"):
        verify_submission_set_signature(xml, DOCS, ca_cert_pem=None, allow_sha1=False)


def test_bad_parameters_are_refused(sign_credential):
    with pytest.raises(ValueError, match="XML ID"):
        sign_submission_set(sign_credential, submission_set_uid=SS_UID, documents=list(DOCS.items()),
                            signature_id="1.2.250.1.999.42.4.7", signing_time=WHEN)
    with pytest.raises(ValueError, match="sha1 or sha256"):
        _sign(sign_credential, digest="md5")
    with pytest.raises(ValueError, match=f"document {DOC1}: not well-formed"):
        _sign(sign_credential, documents={DOC1: b"<ClinicalDocument>"})


def test_the_gie_example_is_valid_xades_111():
    """TD2.1, the GIE's own signature, validates against the XAdES 1.1.1 schema the GIE ships. As a whole
    its one schema error is its ds:Signature Id, a UUID, which is not an XML ID (NCName): the sandbox
    checks the XAdES part only, our own output is held to the whole."""
    td21 = TD21.read_bytes()
    assert validate.xades_errors(td21) == []
    (error,) = validate.signature_errors(td21)
    assert error.startswith("/Signature:") and "'Id'" in error and "xs:ID" in error


@pytest.mark.parametrize("digest,xades", PROFILES)
def test_schema_valid_as_a_whole(sign_credential, digest, xades):
    """XAdES against its schema (1.1.1: the GIE's; 1.3.2: ETSI's) and the whole signature against XML-DSig,
    which also makes every Id we emit an XML ID."""
    xml = _sign(sign_credential, digest, xades)
    assert validate.xades_errors(xml) == []
    assert validate.signature_errors(xml) == []


def test_xades_111_cert_digest_holds_xades_digest_elements(sign_credential):
    sig = etree.fromstring(_sign(sign_credential))
    digest_method = sig.find(f".//{{{XADES_111}}}CertDigest/{{{XADES_111}}}DigestMethod")
    assert digest_method is not None and digest_method.get("Algorithm") == f"{DS_NS}sha1"
    digest_method.tag = f"{{{DS_NS}}}DigestMethod"  # what we wrote before: XAdES 1.3.2's shape
    assert any("DigestMethod" in e for e in validate.xades_errors(etree.tostring(sig)))


@pytest.mark.parametrize("digest,xades", PROFILES)
def test_signing_certificate_lists_the_signer_and_its_ca(sign_credential, pki, digest, xades):
    sig = etree.fromstring(_sign(sign_credential, digest, xades))
    digest_ns = XADES_111 if xades == XADES_111 else DS_NS
    certs = sig.findall(f".//{{{xades}}}SigningCertificate/{{{xades}}}Cert")
    listed = [(c.findtext(f"{{{xades}}}CertDigest/{{{digest_ns}}}DigestValue"),
               c.findtext(f"{{{xades}}}IssuerSerial/{{{DS_NS}}}X509IssuerName"),
               c.findtext(f"{{{xades}}}IssuerSerial/{{{DS_NS}}}X509SerialNumber")) for c in certs]
    hash_ = getattr(hashes, digest.upper())
    path = [sign_credential.certificate, x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())]
    assert listed == [(b64(certificate_digest(c, hash_())), c.issuer.rfc4514_string(), str(c.serial_number))
                      for c in path]
    verify_submission_set_signature(etree.tostring(sig), DOCS, ca_cert_pem=pki.ca_cert.read_bytes())


def _shape(root: etree._Element) -> set[tuple]:
    """Each element's path from the root, its attributes' names, and its Algorithm and Type values."""
    def path(e):
        return tuple(n.tag for n in reversed([e, *e.iterancestors()]))
    return {(path(e), tuple(sorted(e.attrib)), e.get("Algorithm"), e.get("Type")) for e in root.iter(etree.Element)}


def test_shape_is_the_gie_examples_element_by_element(sign_credential):
    """Our SHA-1 / XAdES 1.1.1 signature has exactly the elements, attributes and algorithms of TD2.1,
    with one deliberate difference: TD2.1's SignatureProperties is in no namespace (xmlns=""), ours in
    XML-DSig's, as DRIMbox and the TLSi kit write it and IHE DSG describes it."""
    td21 = etree.fromstring(TD21.read_bytes())
    for properties in td21.iter("SignatureProperties"):
        for element in properties.iter():
            element.tag = f"{{{DS_NS}}}{element.tag}"
    ours = etree.fromstring(_sign(sign_credential, "sha1", XADES_111))
    assert _shape(ours) == _shape(td21)


@pytest.mark.parametrize("digest,xades", PROFILES)
def test_the_setting_chooses_the_profile_of_the_requests_signature(tmp_path, sign_credential, pki, digest, xades):
    """signature.digest / signature.xades_namespace (default: TD2.1's sha1 and XAdES 1.1.1) reach the
    signature of a prepared request, which libxmlsec1 verifies, manifest included."""
    from conftest import make_document, make_patient, make_settings

    from connector import prepare
    from connector.payload import cda, ids

    defaults = make_settings(tmp_path).signature
    assert (defaults.digest, defaults.xades_namespace) == ("sha1", XADES_111)
    settings = make_settings(tmp_path, signature={"digest": digest, "xades_namespace": xades})
    structure, site = settings.structure, settings.structure.sites[0]
    patient, document = make_patient(), make_document()
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    body = cda.build_cda(document, patient, site, structure, b"%PDF-1.4\n%%EOF\n", unique_id=uid)
    keys = [(document.document_id, document.version)]
    ss_uid = ids.submission_set_unique_id(structure.oid_root, keys)
    prepared = prepare.submission(settings, sign_credential, site=site, patient=patient, documents=[(document, uid, body)],
                                  submission_set_uid=ss_uid,
                                  submission_set_entry_uuid=ids.submission_set_entry_uuid(structure.oid_root, keys),
                                  submission_time=WHEN)
    sig = etree.fromstring(prepared.signature_xml)
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith(f"rsa-{digest}")
    assert sig.find(f"ds:Object/{{{xades}}}QualifyingProperties", NS) is not None
    assert validate.signature_errors(prepared.signature_xml) == []
    result = xmlsec_verify(prepared.signature_xml, pki.ca_cert, documents=with_submission_set(ss_uid, {uid: body}))
    assert result.ok and result.manifest_ok() == [f"urn:oid:{uid}"], result
