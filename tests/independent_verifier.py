"""An independent verifier of our XML signatures: libxmlsec1 (the XML Security Library behind Debian's
`xmlsec1` command) through its Python bindings `xmlsec`, whose manylinux wheels bundle the library, so
the tests need nothing outside `pip install -e '.[test]'`. Neither signxml nor our code: libxmlsec1
parses the references, dereferences, canonicalizes, digests and checks the signer's chain itself.

The submission-set signature's IHE manifest names its documents by `urn:oid:<uniqueId>`; libxmlsec1
dereferences URIs through IO callbacks, so the documents are served at their URIs for the time of a
verification (as `xmlsec1 --url-map:urn:oid:<uid> <file>` would). XML-DSig leaves the outcome of manifest
references to the application (core validation covers SignedInfo only) and the bindings expose only
core validation, so each manifest reference is then recomputed by libxmlsec1 on its own (a one-reference
template signed with a throwaway HMAC key: libxmlsec1 dereferences, applies the reference's transforms
and digest) and compared with the manifest's DigestValue: `Verification.manifest` says which match."""

from __future__ import annotations

import copy
import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import xmlsec
from lxml import etree

DS = "{http://www.w3.org/2000/09/xmldsig#}"
_HMAC_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256"
_C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"


@dataclass(frozen=True)
class Verification:
    ok: bool  # core validation: SignedInfo's references and the signature value, signer chained to the CA
    error: str = ""
    manifest: tuple[tuple[str, bool], ...] = ()  # each manifest reference: (URI, its digest matches)

    def manifest_ok(self) -> list[str]:
        return [uri for uri, ok in self.manifest if ok]


def xmlsec_verify(xml: bytes, trusted_pem: Path, *, id_attribute: str | None = None,
                  documents: dict[str, bytes] | None = None) -> Verification:
    """Verify the first ds:Signature of `xml` with a key whose certificate chains to `trusted_pem`.

    `id_attribute`: an attribute to register as an XML ID besides XML-DSig's own `Id` (SAML's `ID`).
    `documents`: bytes served at each `urn:oid:<key>` URI (manifest references)."""
    root = etree.fromstring(xml)
    if id_attribute:
        xmlsec.tree.add_ids(root, [id_attribute])
    signature = root if root.tag == f"{DS}Signature" else xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature)
    if signature is None:
        return Verification(False, "no ds:Signature")
    manager = xmlsec.KeysManager()
    manager.load_cert(str(trusted_pem), xmlsec.constants.KeyDataFormatPem, xmlsec.constants.KeyDataTypeTrusted)
    with _served({f"urn:oid:{uid}": body for uid, body in (documents or {}).items()}):
        try:
            xmlsec.SignatureContext(manager).verify(signature)
        except xmlsec.Error as exc:
            return Verification(False, f"{type(exc).__name__}: {exc}")
        manifest = tuple((ref.get("URI"), _recomputed(ref) == ref.findtext(f"{DS}DigestValue").strip())
                         for ref in signature.iterfind(f"{DS}Object/{DS}Manifest/{DS}Reference"))
    return Verification(True, manifest=manifest)


def _recomputed(reference: etree._Element) -> str | None:
    """The digest libxmlsec1 computes for a reference (its URI, transforms and DigestMethod), or None if
    it cannot dereference it."""
    template = etree.Element(f"{DS}Signature", nsmap={"ds": DS[1:-1]})
    signed_info = etree.SubElement(template, f"{DS}SignedInfo")
    etree.SubElement(signed_info, f"{DS}CanonicalizationMethod", Algorithm=_C14N)
    etree.SubElement(signed_info, f"{DS}SignatureMethod", Algorithm=_HMAC_SHA256)
    copied = copy.deepcopy(reference)
    copied.find(f"{DS}DigestValue").text = ""
    signed_info.append(copied)
    etree.SubElement(template, f"{DS}SignatureValue")
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_binary_data(xmlsec.constants.KeyDataHmac, b"throwaway key, digests only")
    try:
        context.sign(template)
    except xmlsec.Error:
        return None
    return copied.findtext(f"{DS}DigestValue").strip()


@contextmanager
def _served(bodies: dict[str, bytes]):
    """libxmlsec1's IO callbacks (global to the process) serve `bodies` at their URIs, and only them."""
    xmlsec.cleanup_callbacks()
    xmlsec.register_callbacks(lambda uri: uri.decode() in bodies, lambda uri: io.BytesIO(bodies[uri.decode()]),
                              lambda stream, buffer: stream.readinto(buffer), lambda stream: stream.close())
    try:
        yield
    finally:
        xmlsec.cleanup_callbacks()
        xmlsec.register_default_callbacks()


def with_submission_set(submission_set_uid: str, documents: dict[str, bytes]) -> dict[str, bytes]:
    """The bodies of a submission-set signature's manifest references. The submission set has no byte
    form: its reference carries the fixed placeholder digest "AA==" (one zero byte, not even a digest's
    length, as the GIE's TD2.1 and the DMP clients write it), which no content can match; it is served
    empty so that libxmlsec1 can dereference it, and it is the one reference expected not to match."""
    return {submission_set_uid: b"", **documents}
