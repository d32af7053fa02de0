"""The VIHF token: a SAML 2.0 assertion signed with the structure's ORG SIGN certificate (indirect
authentication), carried in the wsse:Security header of every DMP call (dmp-spec-notes §2)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field

from cryptography import x509
from lxml import etree

from connector.config import FINESS_RE, VihfSettings
from connector.trust.certs import Credential
from connector.trust.roles import RoleError, subject_roles
from connector.trust.xmlsig import (
    DIGEST_URIS,
    DS_NS,
    EXC_C14N,
    XSI_NS,
    SignatureError,
    add_reference,
    canonicalize,
    digest,
    ds,
    finish_signature,
    new_signed_info,
    parse,
    signer_certificate,
    verify_signed_info,
)

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
HL7_NS = "urn:hl7-org:v3"
X509_SUBJECT_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
FACILITY_TYPE_SYSTEM = "1.2.250.1.71.4.2.4"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
INCLUSIVE_PREFIXES = ["ds", "saml", "#default", "xsi"]  # as in the ANS example VIHF
_RPPS = re.compile(r"^[0-9]{11}$")
NATIONAL_ID = re.compile(r"^8[0-9]{11}$")  # "8" + RPPS
XS_NS = "http://www.w3.org/2001/XMLSchema"


class VihfError(SignatureError):
    """A VIHF that does not verify or lacks what the DMP needs."""


@dataclass(frozen=True)
class CodedValue:
    code: str
    code_system: str
    code_system_name: str | None
    display_name: str | None


@dataclass(frozen=True)
class VihfInfo:
    assertion_id: str
    issue_instant: str
    issuer: str
    name_id: str
    attributes: dict[str, str | CodedValue]  # the first value of each attribute
    signer: x509.Certificate
    values: dict[str, tuple[str | CodedValue, ...]] = field(default_factory=dict)  # every value (role: 1 or 2)


def _saml(tag: str) -> str:
    return f"{{{SAML_NS}}}{tag}"


ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"


def build_vihf(
    credential: Credential,
    vihf: VihfSettings,
    *,
    finess_geo: str,
    facility_type: str,
    patient_ins_cx: str,
    subject_rpps: str,
    subject_specialty: str | None,
    issue_instant: dt.datetime | None = None,
) -> etree._Element:
    """The signed VIHF assertion for one patient's transaction, on behalf of the professional `subject_rpps`
    of JDV_J01 specialty `subject_specialty`. Structure and attributes as the GIE's example VIHF for indirect
    authentication (VIHF_INDIRECTE_signe.xml)."""
    if not _RPPS.match(subject_rpps or ""):
        raise ValueError("VIHF subject: the RPPS must be 11 digits")
    if subject_rpps in vihf.generic_rpps:
        raise ValueError(f"VIHF subject: RPPS {subject_rpps} is listed in vihf.generic_rpps (EXI 24 forbids it)")
    if not FINESS_RE.match(finess_geo or ""):
        raise ValueError("VIHF: finess_geo is not a 9-character FINESS")
    if not facility_type:
        raise ValueError("VIHF: facility_type (JDV_J61 code) is required")
    try:
        roles = subject_roles(subject_specialty)
    except RoleError as exc:
        raise ValueError(f"VIHF subject role: {exc}") from None

    instant = (issue_instant or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    # milliseconds and Z, as every GIE example VIHF (2019-06-26T08:46:06.839Z)
    stamp = instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assertion_id = "_" + uuid.uuid4().hex
    E = etree.SubElement

    root = etree.Element(_saml("Assertion"), nsmap={None: SAML_NS, "xsi": XSI_NS},
                         ID=assertion_id, IssueInstant=stamp, Version="2.0")
    E(root, _saml("Issuer"), Format=X509_SUBJECT_NAME).text = credential.subject_dn
    E(E(root, _saml("Subject")), _saml("NameID")).text = national_id(subject_rpps)
    authn = E(root, _saml("AuthnStatement"), AuthnInstant=stamp)
    E(E(authn, _saml("AuthnContext")), _saml("AuthnContextClassRef")).text = vihf.authn_context

    statement = E(root, _saml("AttributeStatement"))

    def attribute(name: str) -> etree._Element:
        return E(statement, _saml("Attribute"), Name=name)

    def text(name: str, value: str) -> None:
        # xsi:type="xs:string", with xs declared on the value, as in the GIE's examples.
        value_el = E(attribute(name), _saml("AttributeValue"), nsmap={"xs": XS_NS})
        value_el.set(f"{{{XSI_NS}}}type", "xs:string")
        value_el.text = value

    def coded(parent: etree._Element, tag: str, **attrs: str) -> None:
        el = E(E(parent, _saml("AttributeValue")), f"{{{HL7_NS}}}{tag}", nsmap={None: HL7_NS})
        el.set(f"{{{XSI_NS}}}type", "CE")
        for key, value in attrs.items():
            if value:
                el.set(key, value)

    # In the order of the GIE's example.
    text("Identifiant_Structure", "1" + finess_geo)
    text("Secteur_Activite", f"{facility_type}^{FACILITY_TYPE_SYSTEM}")
    text(SUBJECT_ID, vihf.subject_id)
    role = attribute(ROLE)
    for value in roles:  # profession, then (physician, pharmacist) savoir-faire or CNOP sub-section
        coded(role, "Role", code=value.code, codeSystem=value.code_system, displayName=value.display)
    text("VIHF_Version", vihf.version)
    text(vihf.authentification_mode_attribute, "INDIRECTE")
    text(RESOURCE_ID, patient_ins_cx)
    text("Ressource_URN", "urn:dmp")
    # codeSystemName "mode acces VIHF 2.0" as in the GIE examples (the ANS mapping's example says 1.0).
    coded(attribute(PURPOSE_OF_USE), "PurposeOfUse", code="normal", codeSystem="1.2.250.1.213.1.1.4.248",
          codeSystemName="mode acces VIHF 2.0", displayName="Accès normal")
    if vihf.lps_id:
        text("LPS_ID", vihf.lps_id)
    text("LPS_Nom", vihf.lps_nom)
    text("LPS_Version", vihf.lps_version)
    text("LPS_ID_HOMOLOGATION_DMP", vihf.lps_id_homologation_dmp)

    # Sign what a receiver will parse: lxml's in-memory namespace declarations (xsi:type set on a child)
    # can canonicalize differently from their serialization.
    root = parse(etree.tostring(root))
    sign_assertion(root, credential, vihf.digest)
    return root


def national_id(rpps: str) -> str:
    """The national id of a professional identified by RPPS: "8" + RPPS (IDNPS), as the VIHF NameID of every
    GIE example and our authorPerson carry it."""
    return "8" + rpps


def rpps_of(name_id: str | None) -> str | None:
    """The RPPS in a VIHF NameID (our own: "8" + RPPS), for the audit trail."""
    if name_id and NATIONAL_ID.match(name_id):
        return name_id[1:]
    return name_id


def sign_assertion(root: etree._Element, credential: Credential, algorithm: str) -> None:
    """Enveloped signature right after Issuer, as in the GIE's example VIHF (rsa-sha1 there, `vihf.digest`).

    Signed by hand rather than with signxml: signxml 5 (enveloped mode) digests with the InclusiveNamespaces
    PrefixList but omits it from the Transform, so nobody can verify the result.
    """
    # The digest of the assertion before the signature is inserted = what the enveloped transform yields.
    value = digest(canonicalize(root, EXC_C14N, INCLUSIVE_PREFIXES), DIGEST_URIS[algorithm])
    signature = etree.Element(ds("Signature"), nsmap={"ds": DS_NS})
    root[0].addnext(signature)
    signed_info = new_signed_info(signature, EXC_C14N, algorithm)
    add_reference(signed_info, "#" + root.get("ID"), algorithm, value,
                  transforms=((ENVELOPED, None), (EXC_C14N, INCLUSIVE_PREFIXES)))
    finish_signature(signature, credential.private_key, credential.certificate, algorithm)


def verify_vihf(element: etree._Element | bytes, ca_cert_pem: bytes) -> VihfInfo:
    """Verify a VIHF's signature and signer chain; return what it asserts (read from the signed bytes)."""
    xml = element if isinstance(element, bytes) else etree.tostring(element)
    root = parse(xml)
    if root.tag != _saml("Assertion"):
        raise VihfError(f"VIHF: expected a SAML 2.0 Assertion, got {root.tag}")
    signature = root.find(ds("Signature"))
    if signature is None:
        raise VihfError("VIHF: the assertion is not signed (no ds:Signature child)")
    try:
        signer = signer_certificate(signature, ca_cert_pem)
        # rsa-sha1 as in every GIE example VIHF, or rsa-sha256 (the ANS mapping's example)
        (result,) = verify_signed_info(root, signer, expect_references=1, id_attribute="ID", allow_sha1=True)
    except SignatureError as exc:
        raise VihfError(f"VIHF: {exc}") from None
    signed = result.signed_xml
    if signed is None or signed.tag != _saml("Assertion") or signed.get("ID") != root.get("ID"):
        raise VihfError("VIHF: the signature does not cover the assertion")

    issuer = signed.findtext(_saml("Issuer")) or ""
    if x509.Name.from_rfc4514_string(issuer) != signer.subject:
        raise VihfError("VIHF: Issuer is not the subject of the signing certificate")
    name_id = signed.findtext(f"{_saml('Subject')}/{_saml('NameID')}")
    if not name_id:
        raise VihfError("VIHF: no Subject/NameID")
    values: dict[str, tuple[str | CodedValue, ...]] = {}
    for attr in signed.iterfind(f"{_saml('AttributeStatement')}/{_saml('Attribute')}"):
        values[attr.get("Name")] = tuple(_value(v) for v in attr.iterfind(_saml("AttributeValue")))
    attributes = {name: found[0] if found else "" for name, found in values.items()}
    return VihfInfo(
        assertion_id=signed.get("ID"),
        issue_instant=signed.get("IssueInstant"),
        issuer=issuer,
        name_id=name_id,
        attributes=attributes,
        signer=signer,
        values=values,
    )


def _value(value: etree._Element) -> str | CodedValue:
    """An AttributeValue: its text, or the HL7 CE it holds (Role, PurposeOfUse)."""
    if len(value):
        child = value[0]
        return CodedValue(child.get("code", ""), child.get("codeSystem", ""), child.get("codeSystemName"),
                          child.get("displayName"))
    return value.text or ""
