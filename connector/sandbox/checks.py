"""Strict checks of a received ITI-41 (Provide and Register Document Set-b), as the DMP would make them.

The sandbox reads the ebRIM metadata itself (a few XPaths, independent of the connector's builder, so a
builder bug is caught rather than shared) and leans on the connector's validators for schemas,
signatures and CDA content. Every failure becomes a RegistryError; the codes (the DMP's own DMPxxxx
codes are not public, so IHE ITI TF-3 Table 4.2.4.1-2 codes are used):

| check                                                   | errorCode                      |
|---------------------------------------------------------|--------------------------------|
| WS-Addressing Action / MessageID / To (each once), body | XDSRepositoryError             |
| VIHF: missing, schema, signature, chain, attributes,    | XDSRepositoryError             |
|   Authentification_mode, Ressource_URN, NameID (national|   (codeContext starts "VIHF")  |
|   id 8+RPPS), role (savoir-faire), homologation number  |                                |
| XDS.b request schema, metadata_errors (as the DMP: see  | XDSRegistryMetadataError       |
|   payload.xds_read), missing SS, no legalAuthenticator  |                                |
| classCode ≠ ASS_X16 of the typeCode or outside JDV_J57, | XDSRegistryMetadataError       |
|   contentTypeCode outside JDV_J59                       |                                |
| VIHF Identifiant_Structure ≠ "1"+FINESS géo of the SS   | XDSRegistryMetadataError       |
|   or entry authorInstitution                            |                                |
| VIHF resource-id ≠ SS patientId; entry patientId ≠ SS   | XDSPatientIdDoesNotMatch       |
| ExtrinsicObject without attachment / attachment alone   | XDSMissingDocument / …Metadata |
|   (ids matched ignoring case, as the GIE's TD2.1 has)   |                                |
| hash or size, when sent, ≠ attachment (else computed);  | XDSRepositoryMetadataError     |
|   CDA invalid; SS signature missing, twice or invalid   |                                |
|   (XAdES schema-invalid: the GIE's XAdES 1.1.1 XSD)     |                                |
| (state) SS uniqueId reused                              | XDSDuplicateUniqueIdInRegistry |
| (state) document uniqueId reused with another hash      | XDSNonIdenticalHash            |
| (state) unknown patient / DMP fermé                     | XDSUnknownPatientId            |
| (faults) injected busy                                  | XDSRegistryBusy                |
| (state) RPLC target: unknown entryUUID                  | UnresolvedReferenceException   |
| (state) RPLC target: not Approved (Deprecated, Deleted, | XDSRegistryDeprecatedDocument- |
|   Archived)                                             |   Error                        |
| (state) RPLC target of another patient                  | XDSPatientIdDoesNotMatch       |

ITI-57 Update Document Set (availability status: Deleted / Archived), `check_update`:

| check                                                   | errorCode                      |
|---------------------------------------------------------|--------------------------------|
| WS-Addressing, body element, VIHF                       | XDSRegistryError (VIHF: as     |
|                                                         |   above, codeContext "VIHF")   |
| ebRS schema (GIE annex; nested objects may omit their   | XDSRegistryMetadataError       |
|   owner's id, as the GIE's TD3.3c/d do), update_errors  |                                |
| NewStatus not Deleted / Archived                        | XDSMetadataUpdateOperationError|
| VIHF resource-id ≠ SS patientId                         | XDSPatientIdDoesNotMatch       |
| (state) SS uniqueId reused                              | XDSDuplicateUniqueIdInRegistry |
| (state) unknown entryUUID                               | UnresolvedReferenceException   |
| (state) entry of another patient than the SS's          | XDSPatientIDReconciliationError|
| (state) VIHF structure ≠ the entry's author structure   | XDSMetadataUpdateError         |
|   (only the author structure may delete or archive)     |                                |
| (state) current status ≠ OriginalStatus, or Deleted     | XDSMetadataUpdateError         |

The DMP's own codes are not public: these are IHE's (ITI TF-3 Table 4.2.4.1-2, ITI-57's metadata update
codes) and ebRS's (UnresolvedReferenceException).

Validators not importable yet (other modules still being written) are skipped and listed in `SKIPPED`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import re
from dataclasses import dataclass, field

from lxml import etree

from connector.dmp import soap
from connector.payload import codes as dmp_codes
from connector.payload import update as iti57
from connector.payload.xds_read import attachments_by_entry

log = logging.getLogger(__name__)

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
HL7 = "urn:hl7-org:v3"
RIM = f"{{{soap.RIM}}}"

SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
SIGNATURE_CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
WITHDRAWAL_STATUSES = ("urn:asip:ci-sis:2010:StatusType:Deleted", "urn:asip:ci-sis:2010:StatusType:Archived")
# The GIE's own ITI-57 examples omit the owner's id on objects nested in the SubmissionSet (ebRIM requires it):
# the DMP accepts them, so the sandbox does too.
_NESTED_OWNER_OMITTED = re.compile(r"The attribute '(classifiedObject|registryObject)' is required but missing")

VIHF_REQUIRED = (
    "VIHF_Version",
    "Identifiant_Structure",
    "Secteur_Activite",
    "urn:oasis:names:tc:xacml:2.0:resource:resource-id",
    "Ressource_URN",
    "urn:oasis:names:tc:xspa:1.0:subject:subject-id",
    "urn:oasis:names:tc:xacml:2.0:subject:role",
    "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
    "LPS_Nom",
    "LPS_Version",
)
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
# Both spellings occur in published material (GIE examples: Authentification_mode; ANS mapping: _Mode).
AUTHENTICATION_MODE = ("Authentification_mode", "Authentification_Mode")
HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"
# The national id of a professional, as in every GIE example VIHF: "8" + RPPS (or "0" + ADELI).
NATIONAL_ID_NAME_ID = re.compile(r"^(?:8[0-9]{11}|0[0-9]{9})$")
PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"  # TRE_G15
# The second role value a physician (10) or pharmacist (21) must carry: savoir-faire (TRE_R01) or CNOP
# sub-section (TRE_G05), as in the GIE examples and the ANS VIHF mapping.
SECOND_ROLE_SYSTEM = {"10": "1.2.250.1.71.4.2.5", "21": "1.2.250.1.71.4.2.6"}
MAX_ERRORS_PER_CHECK = 5
# The role and purposeofuse values are HL7 v3 CE elements (xsi:type="CE", ANS example VIHF); the SAML
# schema set has no HL7 datatypes to resolve that type against, which is not the sender's fault.
# TODO: drop once payload.validate.saml_assertion_errors knows the HL7 CE type.
_HL7_XSI_TYPE = re.compile(r"The QName value '\{urn:hl7-org:v3\}CE' of the xsi:type attribute does not resolve")

_CDA_CHUNK = 4096  # the CDA header (setId, versionNumber) is usually within the first chunk
_CDA_IDENTITY_TAGS = (f"{{{HL7}}}setId", f"{{{HL7}}}versionNumber")

SKIPPED: set[str] = set()  # "module.function" of the validators not available in this process


@dataclass(frozen=True)
class RegistryError:
    code: str
    context: str
    location: str = ""
    check: str = ""  # short name of the failed check, for the report (never sent)
    severity: str = "Error"


@dataclass(frozen=True)
class Entry:
    uid: str
    entry_uuid: str
    patient: str
    hash: str
    size: int
    type_code: str | None
    finess: str | None  # XON.10 of the authorInstitution: "1" + FINESS géo
    is_signature: bool
    set_id: str | None = None
    version: str | None = None
    content: bytes = field(default=b"", repr=False)
    replaces: str | None = None  # entryUUID of the entry this one replaces (RPLC association)
    confidentiality: str | None = None  # its confidentialityCodes, comma-separated (masking, EXI 07/08)


@dataclass(frozen=True)
class Submission:
    uid: str
    entry_uuid: str
    patient: str
    source_id: str | None
    finess: str | None
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class CheckSettings:
    ca_cert_pem: bytes
    fast: bool = False  # skip the CDA schematron (the slow part)


class SoapFault(Exception):
    """The message cannot be answered with a RegistryResponse (not SOAP 1.2)."""

    def __init__(self, code: str, reason: str, subcode: str | None = None):
        super().__init__(reason)
        self.code, self.reason, self.subcode = code, reason, subcode


def _validator(module: str, name: str):
    """A validator of another connector module, or None while that module has not landed."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        if f"{module}.{name}" not in SKIPPED:
            log.warning("sandbox check skipped: %s.%s is not available", module, name)
            SKIPPED.add(f"{module}.{name}")
        return None


def warm_up(settings: CheckSettings) -> None:
    """Import the validators and compile their schemas now, while the sandbox starts: the first request
    would otherwise pay for it (≈0.5 s, the schematron ≈30 s) inside the client's read timeout."""
    _validator("connector.payload.xds_read", "metadata_errors")
    _validator("connector.trust.vihf", "verify_vihf")
    _validator("connector.trust.dsig", "verify_submission_set_signature")
    for name, root in (("xds_request_errors", f"{{{soap.RS}}}RegistryResponse"), ("saml_assertion_errors", f"{{{SAML}}}Assertion"),
                       ("signature_errors", "{http://www.w3.org/2000/09/xmldsig#}Signature")):
        if schema_errors := _validator("connector.payload.validate", name):
            schema_errors(etree.ElementTree(etree.Element(root)))  # compiles the schema; an empty root's errors don't matter
    if not settings.fast and (schematron := _validator("connector.payload.validate", "warm_up")):
        schematron()


def _errors(code: str, check: str, prefix: str, messages: list[str], location: str = "") -> list[RegistryError]:
    shown = [RegistryError(code, f"{prefix}: {m}", location, check) for m in messages[:MAX_ERRORS_PER_CHECK]]
    if len(messages) > MAX_ERRORS_PER_CHECK:
        shown.append(RegistryError(code, f"{prefix}: … {len(messages) - MAX_ERRORS_PER_CHECK} more", location, check))
    return shown


# --- the ITI-41 checks ---------------------------------------------------------------------------


def check_provide_and_register(
    env: etree._Element, documents: dict[str, bytes], settings: CheckSettings
) -> tuple[Submission | None, list[RegistryError]]:
    """(what was submitted, what is wrong with it); the Submission is None when it cannot be read."""
    request = body_request(env)
    errors = addressing_errors(env, soap.ITI41_ACTION)
    if request.tag != f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest":
        errors.append(RegistryError("XDSRepositoryError", f"élément {request.tag} inattendu", check="soap.body"))
        return None, errors
    vihf, vihf_errors = vihf_check(env, settings.ca_cert_pem)
    errors += vihf_errors

    schema_errors = _validator("connector.payload.validate", "xds_request_errors")
    if schema_errors:
        messages = schema_errors(_without_attachments(request))
        errors += _errors("XDSRegistryMetadataError", "xds.schema", "schéma XDS.b", messages)
        if messages:
            return None, errors  # unreadable metadata: the following checks would only add noise
    documents = attachments_by_entry(request, documents)
    try:
        submission = read_submission(request, documents)
    except ValueError as exc:
        return None, errors + [RegistryError("XDSRegistryMetadataError", str(exc), check="xds.read")]

    metadata_errors = _validator("connector.payload.xds_read", "metadata_errors")
    if metadata_errors:
        errors += _errors(
            "XDSRegistryMetadataError", "xds.metadata", "métadonnées",
            metadata_errors(request, documents, as_received=True),
        )
    errors += consistency_errors(submission, vihf, request, documents)
    errors += code_errors(submission, request)
    errors += content_errors(submission, settings)
    return submission, errors


def body_request(env: etree._Element) -> etree._Element:
    try:
        return soap.body_child(env)
    except soap.SoapError as exc:
        code = "VersionMismatch" if not str(env.tag).startswith(f"{{{soap.SOAP12}}}") else "Sender"
        raise SoapFault(code, str(exc)) from None


def addressing_errors(env: etree._Element, action: str) -> list[RegistryError]:
    errors = []
    got = soap.header_value(env, "Action")
    if got != action:
        errors.append(
            RegistryError("XDSRepositoryError", f"WS-Addressing Action {got!r}, attendu {action}", check="wsa.action")
        )
    if not soap.header_value(env, "MessageID"):
        errors.append(RegistryError("XDSRepositoryError", "WS-Addressing MessageID absent", check="wsa.message_id"))
    if not soap.header_value(env, "To"):
        errors.append(RegistryError("XDSRepositoryError", "WS-Addressing To absent", check="wsa.to"))
    # WS-Addressing 1.0 SOAP Binding §6.4.1 (InvalidCardinality): each message addressing property once.
    header = env.find(f"{{{soap.SOAP12}}}Header")
    names = [etree.QName(h).localname for h in header if etree.QName(h).namespace == soap.WSA] if header is not None else []
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(RegistryError("XDSRepositoryError", f"WS-Addressing {name} repeated ({names.count(name)} times)",
                                    check="wsa.cardinality"))
    return errors


def vihf_check(env: etree._Element, ca_cert_pem: bytes) -> tuple[dict[str, str], list[RegistryError]]:
    """({attribute name: first value}, errors) of the VIHF in wsse:Security; attributes are taken from
    the signature-verified assertion only."""

    def err(context: str, check: str) -> RegistryError:
        return RegistryError("XDSRepositoryError", f"VIHF: {context}", check=check)

    assertion = env.find(f"{{{soap.SOAP12}}}Header/{{{soap.WSSE}}}Security/{{{SAML}}}Assertion")
    if assertion is None:
        return {}, [err("wsse:Security sans assertion SAML", "vihf.missing")]
    errors = []
    saml_errors = _validator("connector.payload.validate", "saml_assertion_errors")
    if saml_errors:
        messages = [m for m in saml_errors(assertion) if not _HL7_XSI_TYPE.search(m)]
        errors += [err(f"schéma SAML: {m}", "vihf.schema") for m in messages[:MAX_ERRORS_PER_CHECK]]
    verify = _validator("connector.trust.vihf", "verify_vihf")
    if verify is None:
        return {}, errors
    try:
        info = verify(assertion, ca_cert_pem)
    except Exception as exc:  # any failure of the signature or its chain is a refusal
        return {}, errors + [err(f"signature invalide ({type(exc).__name__}: {exc})", "vihf.signature")]
    attributes = {name: _first(value) for name, value in info.attributes.items()}
    missing = [name for name in VIHF_REQUIRED if not attributes.get(name)]
    modes = [name for name in AUTHENTICATION_MODE if name in attributes]
    if not modes:
        missing.append(AUTHENTICATION_MODE[0])
    if missing:
        errors.append(err(f"attributs absents: {', '.join(missing)}", "vihf.attributes"))
    if any(attributes[name] != "INDIRECTE" for name in modes) or len(modes) > 1:
        errors.append(err(f"{AUTHENTICATION_MODE[0]} doit valoir INDIRECTE (une seule fois)", "vihf.mode"))
    if attributes.get("Ressource_URN") not in (None, "", "urn:dmp"):
        errors.append(err("Ressource_URN doit valoir urn:dmp", "vihf.resource_urn"))
    if not NATIONAL_ID_NAME_ID.match(info.name_id or ""):
        errors.append(err("NameID n'est pas l'identifiant national d'un professionnel (8 + RPPS)", "vihf.name_id"))
    errors += _role_errors(info.values.get(ROLE, ()), err)
    if not attributes.get(HOMOLOGATION):
        errors.append(err(f"{HOMOLOGATION} absent ou vide (numéro d'homologation DMP du LPS)", "vihf.homologation"))
    return attributes, errors


def _role_errors(values, err) -> list[RegistryError]:
    """A physician's or pharmacist's role carries the profession, then the savoir-faire / CNOP sub-section."""
    if not values or getattr(values[0], "code_system", None) != PROFESSION_SYSTEM:
        return []  # absent: reported with the attributes; a non-health profession needs one value
    second_system = SECOND_ROLE_SYSTEM.get(values[0].code)
    if second_system and not any(getattr(v, "code_system", None) == second_system for v in values[1:]):
        return [err(f"rôle {values[0].code} sans savoir-faire ({second_system})", "vihf.role")]
    return []


def _first(value) -> str:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    if hasattr(value, "code"):  # trust.vihf.CodedValue (role, purposeofuse)
        return value.code
    return str(value or "")


def _without_attachments(request: etree._Element) -> etree._ElementTree:
    """The request as XOP means it, minus the bytes: each xdsb:Document as empty base64Binary."""
    tree = etree.ElementTree(copy.deepcopy(request))
    for doc in tree.getroot().iter(f"{{{soap.XDSB}}}Document"):
        for child in list(doc):
            doc.remove(child)
        doc.text = None
    return tree


# --- ITI-57 Update Document Set ---------------------------------------------------------------------


@dataclass(frozen=True)
class StatusUpdate:
    """What an ITI-57 request asks: move `target` from `original` to `new` (status URNs)."""

    target: str
    original: str
    new: str


@dataclass(frozen=True)
class UpdateRequest:
    uid: str
    entry_uuid: str
    patient: str
    structure: str | None  # the VIHF's Identifiant_Structure: who asks
    changes: tuple[StatusUpdate, ...]


def check_update(env: etree._Element, settings: CheckSettings) -> tuple[UpdateRequest | None, list[RegistryError]]:
    """(what an ITI-57 request asks, what is wrong with it); the request is None when it cannot be read."""
    request = body_request(env)
    errors = [RegistryError("XDSRegistryError", e.context, e.location, e.check)
              for e in addressing_errors(env, soap.ITI57_ACTION)]
    if request.tag != f"{{{soap.LCM}}}SubmitObjectsRequest":
        return None, errors + [RegistryError("XDSRegistryError", f"élément {request.tag} inattendu", check="soap.body")]
    vihf, vihf_errors = vihf_check(env, settings.ca_cert_pem)
    errors += [RegistryError("XDSRegistryError", e.context, e.location, e.check) for e in vihf_errors]
    if schema_errors := _validator("connector.payload.validate", "update_request_errors"):
        messages = [m for m in schema_errors(request) if not _NESTED_OWNER_OMITTED.search(m)]
        errors += _errors("XDSRegistryMetadataError", "iti57.schema", "schéma ebRS", messages)
        if messages:
            return None, errors
    for message in iti57.update_errors(request):
        code = "XDSMetadataUpdateOperationError" if "NewStatus" in message else "XDSRegistryMetadataError"
        errors.append(RegistryError(code, f"mise à jour: {message}", check="iti57.metadata"))
    view = iti57.parse_update(request)
    if not view.submission_set_uid or not view.patient_id:
        return None, errors + [RegistryError("XDSRegistryMetadataError", "lot sans uniqueId ou patientId",
                                             check="iti57.read")]
    if vihf and vihf.get(RESOURCE_ID) != view.patient_id:
        errors.append(RegistryError("XDSPatientIdDoesNotMatch", "resource-id du VIHF différent du patientId du lot",
                                    view.submission_set_uid, "patient.vihf"))
    changes = tuple(StatusUpdate(c.entry_uuid, c.original_status or "", c.new_status or "") for c in view.changes)
    return UpdateRequest(view.submission_set_uid, view.submission_set_entry_uuid or "", view.patient_id,
                         vihf.get("Identifiant_Structure") if vihf else None, changes), errors


# --- reading the ebRIM metadata -----------------------------------------------------------------


def _external_id(obj: etree._Element, scheme: str) -> str | None:
    for ei in obj.iter(f"{RIM}ExternalIdentifier"):
        if ei.get("identificationScheme") == scheme:
            return ei.get("value")
    return None


def _slot(obj: etree._Element, name: str) -> list[str]:
    for slot in obj.findall(f"{RIM}Slot"):
        if slot.get("name") == name:
            return [v.text or "" for v in slot.iter(f"{RIM}Value")]
    return []


def _classifications(obj: etree._Element, scheme: str) -> list[etree._Element]:
    return [c for c in obj.findall(f"{RIM}Classification") if c.get("classificationScheme") == scheme]


def _institution_ids(obj: etree._Element, author_scheme: str) -> list[str]:
    """XON.10 (the national id, "1"+FINESS) of every authorInstitution of `obj`."""
    ids = []
    for author in _classifications(obj, author_scheme):
        for xon in _slot(author, "authorInstitution"):
            parts = xon.split("^")
            ids.append(parts[9] if len(parts) > 9 else "")
    return ids


def read_submission(request: etree._Element, documents: dict[str, bytes]) -> Submission:
    objects = request.find(f"{{{soap.LCM}}}SubmitObjectsRequest/{RIM}RegistryObjectList")
    if objects is None:
        raise ValueError("lcm:SubmitObjectsRequest/rim:RegistryObjectList absent")
    ss_ids = {c.get("classifiedObject") for c in objects.iter(f"{RIM}Classification") if c.get("classificationNode") == SS_NODE}
    packages = [p for p in objects.findall(f"{RIM}RegistryPackage") if p.get("id") in ss_ids]
    if len(packages) != 1:
        raise ValueError(f"{len(packages)} lot(s) de soumission (RegistryPackage classé SubmissionSet), attendu 1")
    package = packages[0]
    uid, patient = _external_id(package, SS_UNIQUE_ID), _external_id(package, SS_PATIENT_ID)
    if not uid or not patient:
        raise ValueError("lot de soumission sans uniqueId ou patientId")
    replaced = {a.get("sourceObject"): a.get("targetObject") for a in objects.findall(f"{RIM}Association")
                if a.get("associationType") == RPLC}
    entries = []
    for obj in objects.findall(f"{RIM}ExtrinsicObject"):
        eid = obj.get("id") or ""
        content = documents.get(eid, b"")
        classes = [c.get("nodeRepresentation") for c in _classifications(obj, DE_CLASS_CODE)]
        types = [c.get("nodeRepresentation") for c in _classifications(obj, DE_TYPE_CODE)]
        institutions = _institution_ids(obj, DE_AUTHOR)
        is_signature = SIGNATURE_CLASS in classes
        set_id, version = (None, None) if is_signature else _cda_identity(content)
        entries.append(
            Entry(
                uid=_external_id(obj, DE_UNIQUE_ID) or "",
                entry_uuid=eid,
                patient=_external_id(obj, DE_PATIENT_ID) or "",
                hash=hashlib.sha1(content).hexdigest(),  # as a repository computes it; a wrong one sent is refused
                size=len(content),
                type_code=types[0] if types else None,
                finess=institutions[0] if institutions else None,
                is_signature=is_signature,
                set_id=set_id,
                version=version,
                content=content,
                replaces=replaced.get(eid),
                confidentiality=",".join(c.get("nodeRepresentation") or "" for c in _classifications(obj, DE_CONFIDENTIALITY)),
            )
        )
    institutions = _institution_ids(package, SS_AUTHOR)
    return Submission(
        uid=uid,
        entry_uuid=package.get("id") or "",
        patient=patient,
        source_id=_external_id(package, SS_SOURCE_ID),
        finess=institutions[0] if institutions else None,
        entries=tuple(entries),
    )


def _cda_identity(content: bytes) -> tuple[str | None, str | None]:
    """(setId, versionNumber) of a CDA: the producer's identity of the document, to spot a document
    delivered twice under two uniqueIds. Both sit in the CDA header, so the parse stops once they are
    read instead of building the whole document (its base64 body is most of the bytes); well-formedness
    of the whole document is the signature check's business (its digest covers the whole canonical form)."""
    parser = etree.XMLPullParser(("start",), resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    root, found = None, {}
    try:
        for offset in range(0, len(content), _CDA_CHUNK):
            parser.feed(content[offset : offset + _CDA_CHUNK])
            for _, element in parser.read_events():
                if root is None:
                    root = element
                elif element.getparent() is root and element.tag in _CDA_IDENTITY_TAGS:
                    found.setdefault(element.tag, element)
            if len(found) == len(_CDA_IDENTITY_TAGS):
                break
        else:
            parser.close()
    except etree.XMLSyntaxError:
        return None, None
    set_id, version = found.get(f"{{{HL7}}}setId"), found.get(f"{{{HL7}}}versionNumber")
    sid = None if set_id is None else f"{set_id.get('root', '')}^{set_id.get('extension', '')}"
    return sid, None if version is None else version.get("value")


# --- cross-checks ----------------------------------------------------------------------------------


def consistency_errors(
    submission: Submission, vihf: dict[str, str], request: etree._Element, documents: dict[str, bytes]
) -> list[RegistryError]:
    errors = []
    structure = vihf.get("Identifiant_Structure")
    if vihf:  # a VIHF that verified: its structure and patient must be the submission's
        ss_ids = _institution_ids(_package(request, submission), SS_AUTHOR)
        if structure not in ss_ids:
            errors.append(
                RegistryError(
                    "XDSRegistryMetadataError",
                    "Identifiant_Structure du VIHF différent du FINESS géographique (authorInstitution) du lot",
                    submission.uid,
                    "finess.submission_set",
                )
            )
        if vihf.get(RESOURCE_ID) != submission.patient:
            errors.append(
                RegistryError(
                    "XDSPatientIdDoesNotMatch",
                    "resource-id du VIHF différent du patientId du lot",
                    submission.uid,
                    "patient.vihf",
                )
            )
    objects = {o.get("id"): o for o in request.iter(f"{RIM}ExtrinsicObject")}
    for entry in submission.entries:
        if vihf and not entry.is_signature and structure not in _institution_ids(objects[entry.entry_uuid], DE_AUTHOR):
            errors.append(
                RegistryError(
                    "XDSRegistryMetadataError",
                    "Identifiant_Structure du VIHF différent du FINESS géographique (authorInstitution) du document",
                    entry.uid,
                    "finess.document",
                )
            )
        if entry.patient != submission.patient:
            errors.append(
                RegistryError(
                    "XDSPatientIdDoesNotMatch", "patientId du document différent de celui du lot", entry.uid, "patient.entry"
                )
            )
        if not entry.uid:
            errors.append(RegistryError("XDSRegistryMetadataError", "document sans uniqueId", entry.entry_uuid, "xds.read"))
        if entry.entry_uuid not in documents:
            errors.append(
                RegistryError("XDSMissingDocument", "ExtrinsicObject sans xdsb:Document", entry.uid, "document.missing")
            )
            continue
        declared_hash, declared_size = (_slot(objects[entry.entry_uuid], name) or [""] for name in ("hash", "size"))
        if declared_hash[0] and declared_hash[0].lower() != entry.hash:
            errors.append(
                RegistryError("XDSRepositoryMetadataError", "hash différent du contenu reçu", entry.uid, "document.hash")
            )
        if declared_size[0] and declared_size[0] != str(entry.size):
            errors.append(
                RegistryError("XDSRepositoryMetadataError", "size différente du contenu reçu", entry.uid, "document.size")
            )
    for doc_id in sorted(set(documents) - set(objects)):
        errors.append(
            RegistryError(
                "XDSMissingDocumentMetadata", "xdsb:Document sans ExtrinsicObject", doc_id, "document.metadata_missing"
            )
        )
    return errors


def _coded(classification: etree._Element) -> tuple[str, str]:
    """(code, codingScheme) of a Classification."""
    return classification.get("nodeRepresentation") or "", (_slot(classification, "codingScheme") or [""])[0]


def code_errors(submission: Submission, request: etree._Element) -> list[RegistryError]:
    """The DMP's coded metadata against its own tables (schemas/ans-terminologies/): each document's classCode is
    the one ASS_X16 gives its typeCode (a typeCode the map does not list is not contradicted) and is in JDV_J57;
    the submission set's contentTypeCode is in JDV_J59, code and code system."""
    errors = []
    objects = {o.get("id"): o for o in request.iter(f"{RIM}ExtrinsicObject")}
    for entry in submission.entries:
        if entry.is_signature:
            continue
        for classification in _classifications(objects[entry.entry_uuid], DE_CLASS_CODE):
            code, scheme = _coded(classification)
            known, mapped = dmp_codes.class_code(code), dmp_codes.dmp_class_code(entry.type_code)
            if known is None or known.code_system != scheme:
                errors.append(RegistryError("XDSRegistryMetadataError", f"classCode {code} ({scheme}) hors JDV_J57",
                                            entry.uid, "codes.class_code"))
            elif mapped is not None and mapped.code != code:
                errors.append(RegistryError(
                    "XDSRegistryMetadataError",
                    f"classCode {code} contredit ASS_X16 pour le typeCode {entry.type_code} (attendu {mapped.code})",
                    entry.uid, "codes.class_code"))
    content_types = _classifications(_package(request, submission), SS_CONTENT_TYPE)
    if not content_types:
        errors.append(RegistryError("XDSRegistryMetadataError", "lot de soumission sans contentTypeCode",
                                    submission.uid, "codes.content_type"))
    for classification in content_types:
        code, scheme = _coded(classification)
        if not dmp_codes.is_content_type(code, scheme):
            errors.append(RegistryError("XDSRegistryMetadataError", f"contentTypeCode {code} ({scheme}) hors JDV_J59",
                                        submission.uid, "codes.content_type"))
    return errors


def _package(request: etree._Element, submission: Submission) -> etree._Element:
    return next(p for p in request.iter(f"{RIM}RegistryPackage") if p.get("id") == submission.entry_uuid)


def content_errors(submission: Submission, settings: CheckSettings) -> list[RegistryError]:
    """CDA validity (unless fast) and the submission-set signature over the documents."""
    errors = []
    cdas = [e for e in submission.entries if not e.is_signature]
    signatures = [e for e in submission.entries if e.is_signature]
    cda_errors = None if settings.fast else _validator("connector.payload.validate", "cda_errors")
    for entry in cdas if cda_errors else ():
        errors += _errors("XDSRepositoryMetadataError", "cda", "CDA", cda_errors(entry.content), entry.uid)
    if len(signatures) != 1:
        return errors + [
            RegistryError(
                "XDSRepositoryMetadataError",
                f"signature du lot: {len(signatures)} document(s) de signature, attendu 1",
                submission.uid,
                "signature.missing",
            )
        ]
    if xades_errors := _validator("connector.payload.validate", "xades_errors"):
        errors += _errors("XDSRepositoryMetadataError", "signature.xades", "signature du lot: XAdES invalide",
                          xades_errors(signatures[0].content), signatures[0].uid)
    verify = _validator("connector.trust.dsig", "verify_submission_set_signature")
    if verify:
        problem = None
        try:
            info = verify(signatures[0].content, {e.uid: e.content for e in cdas}, ca_cert_pem=settings.ca_cert_pem)
            if info.submission_set_uid != submission.uid:
                problem = "le manifeste signe un autre lot de soumission"
        except Exception as exc:  # SignatureError, or any other reason the signature cannot be trusted
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            errors.append(
                RegistryError(
                    "XDSRepositoryMetadataError", f"signature du lot invalide ({problem})", signatures[0].uid, "signature.invalid"
                )
            )
    return errors
