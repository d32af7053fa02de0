"""The submission-set signature document (IHE DSG style, XAdES), dmp-spec-notes §3.4.

Shape (as both public DMP clients build it):
    ds:Signature Id=<signature id>
      SignedInfo: c14n WithComments; Reference #IHEManifest (Type …#Manifest), Reference #<id>-SignedProperties
      SignatureValue, KeyInfo/X509Data/X509Certificate
      Object/Manifest Id=IHEManifest: Reference urn:oid:<submission set uid> + one urn:oid:<document uid> each
      Object/SignatureProperties/SignatureProperty Id=purposeOfSignature: 1.2.840.10065.1.12.1.14
      Object/xades:QualifyingProperties: SigningTime, SigningCertificate (a Cert — CertDigest, IssuerSerial —
                                         for the signer and each of its CAs), SignaturePolicyIdentifier/
                                         SignaturePolicyImplied, an empty SignedDataObjectProperties

This is the shape of the GIE's own example, `schemas/gie-dmp-package/messages/TD2.1-SignatureXades.xml`
(XAdES 1.1.1, whose schema puts xades:DigestMethod/DigestValue in CertDigest), element by element, with
one deliberate difference: its SignatureProperties is in no namespace (xmlns=""), ours in XML-DSig's, as
both public DMP clients (DRIMbox, the TLSi kit) write it and IHE DSG describes it.

A document's reference digests its canonical form (c14n 1.0 with comments, declared as its Transform).
The submission set has no byte form of its own, so its reference carries the fixed placeholder digest
"AA==" exactly like the DRIMbox and ANS kit clients; verifiers check that it names the submission set's
uniqueId, never its digest. Built with lxml and signed with cryptography: signxml's XAdES signer makes
another shape (SigningCertificateV2, no Manifest); signxml verifies it.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass

from cryptography import x509
from lxml import etree

from connector.trust.certs import Credential, certificate_digest
from connector.trust.xmlsig import (
    C14N,
    C14N_WITH_COMMENTS,
    CanonicalDocument,
    XML_DECLARATION,
    DIGEST_URIS,
    DS_NS,
    MANIFEST_TYPE,
    SignatureError,
    HASHES,
    add_reference,
    b64,
    canonicalize,
    digest as compute_digest,
    ds,
    finish_signature,
    new_signed_info,
    parse,
    signer_certificate,
    verify_signed_info,
)

XADES_111 = "http://uri.etsi.org/01903/v1.1.1#"
XADES_132 = "http://uri.etsi.org/01903/v1.3.2#"
SIGNED_PROPERTIES_TYPES = {
    XADES_111: XADES_111 + "SignedProperties",
    XADES_132: "http://uri.etsi.org/01903#SignedProperties",
}
MANIFEST_ID = "IHEManifest"
PURPOSE_OF_SIGNATURE = "1.2.840.10065.1.12.1.14"  # ASTM E1762 "Source"
SUBMISSION_SET_PLACEHOLDER_DIGEST = b"\x00"  # base64 "AA=="
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")

__all__ = ["SignatureError", "SignatureInfo", "sign_submission_set", "verify_submission_set_signature"]


@dataclass(frozen=True)
class SignatureInfo:
    signature_id: str
    submission_set_uid: str
    document_uids: tuple[str, ...]
    signing_time: dt.datetime
    signer: x509.Certificate
    digest: str  # sha1 | sha256
    xades_namespace: str


def sign_submission_set(
    credential: Credential,
    *,
    submission_set_uid: str,
    documents: list[tuple[str, bytes]],
    signature_id: str,
    digest: str = "sha1",
    xades_namespace: str = XADES_111,
    signing_time: dt.datetime,
) -> bytes:
    """The signature document (UTF-8 XML bytes) that `signs` the submission set and its documents."""
    if not _NCNAME.match(signature_id):
        raise ValueError(
            f"signature_id {signature_id!r} is not an XML ID (NCName: no leading digit, no ':'); "
            f"an OID needs a prefix, e.g. 'S{signature_id}'"
        )
    if digest not in DIGEST_URIS:
        raise ValueError(f"signature digest must be sha1 or sha256, not {digest!r}")
    if xades_namespace not in SIGNED_PROPERTIES_TYPES:
        raise ValueError(f"unsupported XAdES namespace {xades_namespace!r}")
    digest_name, digest_uri = digest, DIGEST_URIS[digest]
    props_id = f"{signature_id}-SignedProperties"
    E = etree.SubElement

    def X(tag: str) -> str:
        return f"{{{xades_namespace}}}{tag}"

    signature = etree.Element(ds("Signature"), nsmap={"ds": DS_NS}, Id=signature_id)
    manifest = E(E(signature, ds("Object")), ds("Manifest"), Id=MANIFEST_ID)
    add_reference(manifest, f"urn:oid:{submission_set_uid}", digest_name, SUBMISSION_SET_PLACEHOLDER_DIGEST)
    for uid, content in documents:
        add_reference(manifest, f"urn:oid:{uid}", digest_name, _digest_document(uid, content, C14N_WITH_COMMENTS, digest_uri),
                      transforms=((C14N_WITH_COMMENTS, None),))

    properties = E(E(signature, ds("Object")), ds("SignatureProperties"))
    E(properties, ds("SignatureProperty"), Id="purposeOfSignature", Target=f"#{signature_id}").text = PURPOSE_OF_SIGNATURE

    qualifying = E(E(signature, ds("Object")), X("QualifyingProperties"), nsmap={"xades": xades_namespace},
                   Target=f"#{signature_id}")
    signed_props = E(qualifying, X("SignedProperties"), Id=props_id)
    signed_signature_props = E(signed_props, X("SignedSignatureProperties"))
    E(signed_signature_props, X("SigningTime")).text = _xml_time(signing_time)
    signing_certificate = E(signed_signature_props, X("SigningCertificate"))
    for cert_digest_b64, issuer, serial in _signing_certificates(credential, digest_uri):
        cert = E(signing_certificate, X("Cert"))
        cert_digest = E(cert, X("CertDigest"))
        E(cert_digest, _digest_tag(xades_namespace, "DigestMethod"), Algorithm=digest_uri)
        E(cert_digest, _digest_tag(xades_namespace, "DigestValue")).text = cert_digest_b64
        issuer_serial = E(cert, X("IssuerSerial"))
        E(issuer_serial, ds("X509IssuerName")).text = issuer
        E(issuer_serial, ds("X509SerialNumber")).text = serial
    E(E(signed_signature_props, X("SignaturePolicyIdentifier")), X("SignaturePolicyImplied"))
    E(signed_props, X("SignedDataObjectProperties"))  # empty, as in TD2.1

    # Digest and sign what a receiver will parse (lxml's in-memory namespace nodes may differ).
    signature = parse(etree.tostring(signature))
    signed_info = new_signed_info(signature, C14N_WITH_COMMENTS, digest_name)
    signature.insert(0, signed_info)
    for uri, type_ in ((MANIFEST_ID, MANIFEST_TYPE), (props_id, SIGNED_PROPERTIES_TYPES[xades_namespace])):
        target = _by_id(signature, uri)
        add_reference(signed_info, f"#{uri}", digest_name, compute_digest(canonicalize(target, C14N), digest_uri), type_=type_)
    signature = parse(etree.tostring(signature))
    finish_signature(signature, credential.private_key, credential.certificate, digest_name)
    return etree.tostring(signature, xml_declaration=True, encoding="UTF-8")


def verify_submission_set_signature(
    xml: bytes, documents: dict[str, bytes], *, ca_cert_pem: bytes | None, allow_sha1: bool = True
) -> SignatureInfo:
    """Verify the signature, its signer (chain to `ca_cert_pem` when given), every manifest reference
    against `documents` (uniqueId → CDA bytes) and that every document is referenced."""
    root = parse(xml)
    if root.tag != ds("Signature"):
        raise SignatureError(f"expected a ds:Signature document, got {root.tag}")
    signer = signer_certificate(root, ca_cert_pem)
    # No XML-DSig schema check here (payload.validate.signature_errors explains why, xades_errors checks
    # the XAdES part).
    results = verify_signed_info(
        root, signer, expect_references=2, allow_sha1=allow_sha1, location="./", validate_schema=False
    )
    signed = {r.signed_xml.tag: r.signed_xml for r in results if r.signed_xml is not None}
    manifest = signed.get(ds("Manifest"))
    if manifest is None or manifest.get("Id") != MANIFEST_ID:
        raise SignatureError("SignedInfo does not reference the IHEManifest")
    xades_ns = next((ns for ns in SIGNED_PROPERTIES_TYPES if f"{{{ns}}}SignedProperties" in signed), None)
    if xades_ns is None:
        raise SignatureError("SignedInfo does not reference XAdES SignedProperties (1.1.1 or 1.3.2)")
    signing_time = _check_signed_properties(signed[f"{{{xades_ns}}}SignedProperties"], xades_ns, signer)

    references = manifest.findall(ds("Reference"))
    if not references or not (references[0].get("URI") or "").startswith("urn:oid:"):
        raise SignatureError("manifest: the first reference must name the submission set (urn:oid:…)")
    ss_uid = references[0].get("URI")[len("urn:oid:"):]
    allowed = {DIGEST_URIS["sha256"]} | ({DIGEST_URIS["sha1"]} if allow_sha1 else set())
    seen: list[str] = []
    for ref in references[1:]:
        uri = ref.get("URI") or ""
        uid = uri[len("urn:oid:"):] if uri.startswith("urn:oid:") else None
        if uid is None:
            raise SignatureError(f"manifest reference {uri!r}: not a urn:oid: URI")
        if uid not in documents:
            raise SignatureError(f"manifest reference urn:oid:{uid}: no such document in the submission")
        digest_uri = ref.find(ds("DigestMethod")).get("Algorithm")
        if digest_uri not in allowed:
            raise SignatureError(f"manifest reference urn:oid:{uid}: digest algorithm {digest_uri} not allowed")
        transforms = [t.get("Algorithm") for t in ref.iterfind(f"{ds('Transforms')}/{ds('Transform')}")]
        if len(transforms) > 1 or (transforms and transforms[0] not in (C14N, C14N_WITH_COMMENTS)):
            raise SignatureError(f"manifest reference urn:oid:{uid}: unsupported transforms {transforms}")
        expected = ref.findtext(ds("DigestValue"), "").strip()
        if transforms and _sent_canonical(documents[uid], expected, digest_uri):
            seen.append(uid)
            continue
        try:
            actual = b64(_digest_document(uid, documents[uid], transforms[0] if transforms else None, digest_uri))
        except ValueError as exc:
            raise SignatureError(f"manifest reference urn:oid:{uid}: {exc}") from None
        if actual != expected:
            raise SignatureError(f"manifest reference urn:oid:{uid}: digest mismatch (document changed after signing)")
        seen.append(uid)
    missing = sorted(set(documents) - set(seen))
    if missing:
        raise SignatureError(f"document {missing[0]} is not referenced by the signature manifest")
    digest_name = next(n for n, u in DIGEST_URIS.items() if u == references[0].find(ds("DigestMethod")).get("Algorithm"))
    return SignatureInfo(
        signature_id=root.get("Id", ""),
        submission_set_uid=ss_uid,
        document_uids=tuple(seen),
        signing_time=signing_time,
        signer=signer,
        digest=digest_name,
        xades_namespace=xades_ns,
    )


# --- helpers -----------------------------------------------------------------------------------


def _digest_document(uid: str, content: bytes, transform: str | None, digest_uri: str) -> bytes:
    """Digest of a CDA's canonical form (whole document, so comments/PIs outside the root count too)."""
    if transform is None:
        return compute_digest(content, digest_uri)
    if isinstance(content, CanonicalDocument) and transform in (C14N, C14N_WITH_COMMENTS):
        return compute_digest(content.canonical(), digest_uri)  # canonical already; the builder writes no comment
    try:
        tree = etree.ElementTree(parse(content))
    except SignatureError:
        raise ValueError(f"document {uid}: not well-formed XML, cannot canonicalize it") from None
    return compute_digest(canonicalize(tree, transform), digest_uri)


def _sent_canonical(content: bytes, expected_b64: str, digest_uri: str) -> bool:
    """Whether a document arrived as `XML_DECLARATION` + exactly the canonical form that was signed (as
    our CDA builder writes them): then its digest needs no parse and no c14n. A match proves it (the
    bytes are the signed canonical form, by the digest's second-preimage resistance, and a canonical
    form is its own canonical form); anything else is canonicalized the long way."""
    if not content.startswith(XML_DECLARATION):
        return False
    return b64(compute_digest(memoryview(content)[len(XML_DECLARATION):], digest_uri)) == expected_b64


def _digest_tag(xades_namespace: str, tag: str) -> str:
    """CertDigest's children: XAdES 1.1.1 defines its own DigestMethod/DigestValue (its schema, as the GIE
    ships it, and TD2.1); 1.3.2 uses XML-DSig's."""
    return f"{{{XADES_111}}}{tag}" if xades_namespace == XADES_111 else ds(tag)


@functools.lru_cache(maxsize=8)  # the run's signing credential (compared by identity), per digest
def _signing_certificates(credential: Credential, digest_uri: str) -> tuple[tuple[str, str, str], ...]:
    """(digest, issuer name, serial number) of each certificate of the signer's certification path, as XAdES
    SigningCertificate lists them: the same for every submission set the credential signs."""
    return tuple((b64(certificate_digest(c, HASHES[digest_uri]())), c.issuer.rfc4514_string(), str(c.serial_number))
                 for c in _certification_path(credential))  # the signer then its CAs, as the GIE's TD2.1


def _certification_path(credential: Credential) -> list[x509.Certificate]:
    """The signer's certificate then, from the PKCS#12's chain, its issuer, that one's issuer… up to the root."""
    path = [credential.certificate]
    while path[-1].issuer != path[-1].subject:
        issuer = next((c for c in credential.chain if c.subject == path[-1].issuer and c not in path), None)
        if issuer is None:
            break
        path.append(issuer)
    return path


_WITH_ID = etree.XPath("//*[@Id=$id]")  # compiled once, not per call


def _by_id(root: etree._Element, id_: str) -> etree._Element:
    found = _WITH_ID(root, id=id_)
    if len(found) != 1:
        raise SignatureError(f"expected one element with Id={id_}, found {len(found)}")
    return found[0]


def _xml_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_signed_properties(props: etree._Element, ns: str, signer: x509.Certificate) -> dt.datetime:
    def X(tag: str) -> str:
        return f"{{{ns}}}{tag}"

    ssp = props.find(X("SignedSignatureProperties"))
    if ssp is None:
        raise SignatureError("XAdES: no SignedSignatureProperties")
    try:
        signing_time = dt.datetime.fromisoformat(ssp.findtext(X("SigningTime"), "").strip())
    except ValueError:
        raise SignatureError("XAdES: SigningTime is not an xs:dateTime") from None
    certs = ssp.findall(f"{X('SigningCertificate')}/{X('Cert')}")
    if not certs:
        raise SignatureError("XAdES: no SigningCertificate/Cert")
    signer_cert = None  # the Cert that names the KeyInfo certificate; the others name its CAs
    for cert in certs:
        algorithm = cert.find(f"{X('CertDigest')}/{_digest_tag(ns, 'DigestMethod')}")
        value = cert.findtext(f"{X('CertDigest')}/{_digest_tag(ns, 'DigestValue')}", "").strip()
        if algorithm is None or algorithm.get("Algorithm") not in HASHES:
            raise SignatureError("XAdES: a SigningCertificate CertDigest has no supported DigestMethod "
                                 f"({'xades' if ns == XADES_111 else 'ds'}:DigestMethod)")
        if b64(certificate_digest(signer, HASHES[algorithm.get("Algorithm")]())) == value:
            signer_cert = cert
    if signer_cert is None:
        raise SignatureError("XAdES: no SigningCertificate CertDigest matches the KeyInfo certificate")
    serial = signer_cert.findtext(f"{X('IssuerSerial')}/{ds('X509SerialNumber')}", "").strip()
    if serial != str(signer.serial_number):
        raise SignatureError("XAdES: SigningCertificate IssuerSerial does not match the KeyInfo certificate")
    return signing_time
