"""XML-signature helpers shared by the VIHF and the submission-set signature: algorithms, safe parsing,
the signer's certificate from KeyInfo and its chain, and a signxml verification with our policy."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree

from connector.trust.certs import ChainError, verify_chain

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_WITH_COMMENTS = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
MANIFEST_TYPE = DS_NS + "Manifest"

DIGEST_URIS = {"sha1": DS_NS + "sha1", "sha256": "http://www.w3.org/2001/04/xmlenc#sha256"}
SIGNATURE_URIS = {"sha1": DS_NS + "rsa-sha1", "sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"}
HASHES = {DIGEST_URIS["sha1"]: hashes.SHA1, DIGEST_URIS["sha256"]: hashes.SHA256}

# Foreign XML: no entities, no network, no DTD loading.
SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)


class SignatureError(Exception):
    """A signature that does not verify; the message says which part failed (never patient data)."""


def ds(tag: str) -> str:
    return f"{{{DS_NS}}}{tag}"


def parse(xml: bytes) -> etree._Element:
    try:
        return etree.fromstring(xml, SAFE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"not well-formed XML: {exc}") from None


def digest(data: bytes, algorithm_uri: str) -> bytes:
    try:
        h = hashes.Hash(HASHES[algorithm_uri]())
    except KeyError:
        raise SignatureError(f"unsupported digest algorithm {algorithm_uri}") from None
    h.update(data)
    return h.finalize()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class CanonicalDocument(bytes):
    """XML bytes known to be `XML_DECLARATION` followed by the document's canonical form (C14N 1.0,
    comments kept), as the CDA builder writes them: their digest needs no parse and no c14n. Anything
    that copies or slices them gets plain bytes back, which are canonicalized the long way."""

    def canonical(self) -> memoryview:
        return memoryview(self)[len(XML_DECLARATION):]

    @functools.cached_property
    def sha1_hex(self) -> str:
        """SHA-1 of the bytes (the XDS hash): computed once though the metadata and its self-check both ask."""
        return hashlib.sha1(self).hexdigest()


def canonicalize(node: etree._Element | etree._ElementTree, algorithm_uri: str, prefixes=None) -> bytes:
    """XML canonical form of a node (in its document's namespace context) or of a whole document."""
    if algorithm_uri not in (C14N, C14N_WITH_COMMENTS, EXC_C14N):
        raise SignatureError(f"unsupported canonicalization {algorithm_uri}")
    return etree.tostring(
        node,
        method="c14n",
        exclusive=algorithm_uri == EXC_C14N,
        with_comments=algorithm_uri == C14N_WITH_COMMENTS,
        inclusive_ns_prefixes=prefixes if algorithm_uri == EXC_C14N else None,
    )


def add_reference(
    parent: etree._Element,
    uri: str,
    digest_name: str,
    digest_bytes: bytes,
    *,
    type_: str | None = None,
    transforms: tuple[tuple[str, list[str] | None], ...] = (),
) -> etree._Element:
    """Append ds:Reference(URI, Type)/Transforms/DigestMethod/DigestValue (of the already computed digest);
    transforms are (algorithm, exc-c14n PrefixList or None)."""
    ref = etree.SubElement(parent, ds("Reference"), URI=uri)
    if type_:
        ref.set("Type", type_)
    if transforms:
        xforms = etree.SubElement(ref, ds("Transforms"))
        for algorithm, prefixes in transforms:
            xform = etree.SubElement(xforms, ds("Transform"), Algorithm=algorithm)
            if prefixes:
                etree.SubElement(xform, f"{{{EXC_C14N}}}InclusiveNamespaces", PrefixList=" ".join(prefixes),
                                 nsmap={"ec": EXC_C14N})
    etree.SubElement(ref, ds("DigestMethod"), Algorithm=DIGEST_URIS[digest_name])
    etree.SubElement(ref, ds("DigestValue")).text = b64(digest_bytes)
    return ref


def finish_signature(
    signature: etree._Element, key: RSAPrivateKey, certificate: x509.Certificate, digest_name: str
) -> None:
    """Sign the (complete, in place) SignedInfo; add SignatureValue and KeyInfo/X509Data right after it."""
    signed_info = signature.find(ds("SignedInfo"))
    c14n_uri = signed_info.find(ds("CanonicalizationMethod")).get("Algorithm")
    value = key.sign(canonicalize(signed_info, c14n_uri), PKCS1v15(), HASHES[DIGEST_URIS[digest_name]]())
    sig_value = etree.Element(ds("SignatureValue"))
    sig_value.text = b64(value)
    key_info = etree.Element(ds("KeyInfo"))
    x509_cert = etree.SubElement(etree.SubElement(key_info, ds("X509Data")), ds("X509Certificate"))
    x509_cert.text = _certificate_b64(certificate)
    signed_info.addnext(sig_value)
    sig_value.addnext(key_info)


@functools.lru_cache(maxsize=8)  # the run's signing certificates: two signatures per submission set
def _certificate_b64(certificate: x509.Certificate) -> str:
    return b64(certificate.public_bytes(serialization.Encoding.DER))


def new_signed_info(signature: etree._Element, c14n_uri: str, digest_name: str) -> etree._Element:
    signed_info = etree.SubElement(signature, ds("SignedInfo"))
    etree.SubElement(signed_info, ds("CanonicalizationMethod"), Algorithm=c14n_uri)
    etree.SubElement(signed_info, ds("SignatureMethod"), Algorithm=SIGNATURE_URIS[digest_name])
    return signed_info


def signer_certificate(
    signature: etree._Element, ca_cert_pem: bytes | None, *, at: dt.datetime | None = None
) -> x509.Certificate:
    """The first KeyInfo/X509Data certificate, checked to chain to `ca_cert_pem` when given."""
    texts = [e.text or "" for e in signature.iterfind(f"{ds('KeyInfo')}/{ds('X509Data')}/{ds('X509Certificate')}")]
    if not texts:
        raise SignatureError("no KeyInfo/X509Data/X509Certificate in the signature")
    try:
        certs = [x509.load_der_x509_certificate(base64.b64decode("".join(t.split()))) for t in texts]
    except ValueError as exc:
        raise SignatureError(f"unreadable X509Certificate in KeyInfo: {exc}") from None
    if ca_cert_pem is not None:
        try:
            verify_chain(certs[0], certs[1:], x509.load_pem_x509_certificates(ca_cert_pem), at=at)
        except ChainError as exc:
            raise SignatureError(f"signing certificate not trusted: {exc}") from None
    return certs[0]


def verify_signed_info(
    root: etree._Element,
    signer: x509.Certificate,
    *,
    expect_references: int,
    allow_sha1: bool = False,
    id_attribute: str | None = None,
    location: str = "./",
    validate_schema: bool = True,
):
    """Verify the ds:Signature (SignatureValue and every SignedInfo reference) with signxml.

    Returns signxml's VerifyResult list: use their `signed_xml`, never the unverified input.
    """
    # imported here: only the sandbox and the tests verify, and a run need not load signxml (5.7 MB)
    from signxml import SignatureConfiguration, XMLVerifier
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature

    sig_methods = {SignatureMethod.RSA_SHA256} | ({SignatureMethod.RSA_SHA1} if allow_sha1 else set())
    digests = {DigestAlgorithm.SHA256} | ({DigestAlgorithm.SHA1} if allow_sha1 else set())
    config = SignatureConfiguration(
        location=location,
        expect_references=expect_references,
        signature_methods=frozenset(sig_methods),
        digest_algorithms=frozenset(digests),
    )
    try:
        results = XMLVerifier().verify(
            root, x509_cert=signer, id_attribute=id_attribute, expect_config=config, validate_schema=validate_schema
        )
    except etree.DocumentInvalid as exc:
        raise SignatureError(f"ds:Signature is not valid against the XML-DSig schema: {exc}") from None
    except (InvalidSignature, InvalidDigest, InvalidCertificate, InvalidInput) as exc:
        raise SignatureError(f"XML signature does not verify: {exc}") from None
    return results if isinstance(results, list) else [results]
