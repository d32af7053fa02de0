"""Eligibility rules: may this store document be fed to the DMP now, and if not, why.

Pure functions over the store's `Document`/`Patient` values and the settings (no I/O but the JDV_J07
value set, read once per process by connector.payload.codes). A refusal is a `Skip(reason, detail)`:
`reason` is a `Reason` (stable codes for the ledger, reports and replay); `detail` tells an operator which
field to correct and never contains an INS, a name, a birth date or document content.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum

from connector import ins
from connector.config import Settings
from connector.payload import activity
from connector.payload.codes import CLASS_MAP, dmp_class_code, is_type_code
from connector.payload.hl7 import LOCAL_TZ
from connector.payload.xds import confidentiality_codes, value_too_long
from connector.printable import printable
from connector.store import Document, Patient


class Reason(StrEnum):
    ALREADY_FED = "ALREADY_FED"
    PATIENT_UNKNOWN = "PATIENT_UNKNOWN"  # the document's patient row is missing from the store
    INS_INVALID = "INS_INVALID"
    ENVIRONMENT_MISMATCH = "ENVIRONMENT_MISMATCH"
    INS_NOT_QUALIFIED = "INS_NOT_QUALIFIED"
    PATIENT_OPPOSED = "PATIENT_OPPOSED"
    PATIENT_DECEASED = "PATIENT_DECEASED"
    DOCUMENT_NOT_VALIDATED = "DOCUMENT_NOT_VALIDATED"
    NOT_FOR_DMP = "NOT_FOR_DMP"  # its sender marked it not destined to the DMP (HL7 intake: OBX DESTDMP = N)
    SITE_UNKNOWN = "SITE_UNKNOWN"
    TYPE_NOT_ALLOWED = "TYPE_NOT_ALLOWED"
    ACTIVITY_INVALID = "ACTIVITY_INVALID"  # dmp_document.activity is neither an encounter class nor a JDV_J59 code
    IDENTITY_INCOMPLETE = "IDENTITY_INCOMPLETE"  # a birth trait the CDA requires with an INS is missing
    METADATA_MISSING = "METADATA_MISSING"  # a document field the CDA/XDS metadata requires is missing
    VALUE_TOO_LONG = "VALUE_TOO_LONG"  # a name or title too long for the XDS metadata (ebRIM values: 256 chars)
    # Documents the DMP holds no more as they are in the store (issue 17; the others are corrected: replaced,
    # withdrawn, made visible, see scan.py).
    WITHDRAWN = "WITHDRAWN"  # withdrawn from the DMP (Deleted): nothing more is sent for it
    REPLACED = "REPLACED"  # its DMP entry was replaced by a later one (Deprecated)
    CONTENT_MISSING = "CONTENT_MISSING"
    CONTENT_INVALID = "CONTENT_INVALID"


@dataclass(frozen=True)
class Skip:
    reason: str
    detail: str


QUALIFIED = "QUAL"
VALIDATED = "VALIDATED"
CANCELLED = "CANCELLED"
NOT_FOR_DMP = "NOT_FOR_DMP"  # dmp_document.status of a document its sender did not destine to the DMP
SEXES = frozenset({"M", "F", "U"})  # HL7 AdministrativeGender as used by the CDA
SUPPORTED_MIME_TYPES = ("application/pdf", "text/xml")
_RPPS = re.compile(r"^[0-9]{11}$")
_PDF_EOF_WINDOW = 1024  # readers accept %%EOF within the last 1024 bytes (trailing junk)
PROBE_HEAD, PROBE_TAIL = 64, _PDF_EOF_WINDOW  # the only bytes check_content looks at: the first 64, the last 1024


def check_record(
    document: Document,
    patient: Patient | None,
    settings: Settings,
    *,
    already_fed: bool,
) -> Skip | None:
    """None if the document may be fed, else the first reason why not.

    Order matters, since only the first reason is reported:
    1. ALREADY_FED first: a fed document is done, whatever changed since (a patient who died later). Then
       NOT_FOR_DMP: its sender decided it never goes, so nothing else about it needs fixing.
    2. Patient checks, from the most fundamental: no patient row, then a malformed INS, then an INS of
       the wrong kind for the platform (a safety net: never send a real NIR to a test DMP nor a test NIR
       to production), then the referentiel's exclusions (§4.1: not qualified, opposed, deceased), which
       the identity-vigilance cell can act on and which are re-checked every run.
    3. Document checks that depend on the hospital's workflow (not validated, unknown site, type).
    4. Data the CDA cannot do without (birth traits, author, dates): checked after the exclusions so
       that an opposed patient is reported as opposed, not as incomplete.
    A new version of a document in the DMP goes through the same rules: it replaces it (scan.py).
    """
    if already_fed:
        return Skip(Reason.ALREADY_FED, "this document version is already in the DMP")
    if document.status == NOT_FOR_DMP:
        return Skip(Reason.NOT_FOR_DMP, "status is NOT_FOR_DMP: its sender marked it not destined to the DMP "
                                        "(DESTDMP = N)")
    if patient is None:
        return Skip(Reason.PATIENT_UNKNOWN, "dmp_patient has no row for the document's patient_id")
    problem = ins.check_ins(patient.ins_matricule, patient.ins_oid)
    if problem:
        return Skip(Reason.INS_INVALID, problem)
    mismatch = _environment_mismatch(patient.ins_oid, settings.dmp.environment)
    if mismatch:
        return Skip(Reason.ENVIRONMENT_MISMATCH, mismatch)
    if patient.identity_status != QUALIFIED:
        status = printable(patient.identity_status or "empty", 40)
        return Skip(Reason.INS_NOT_QUALIFIED, f"identity_status is {status}; only QUAL may be fed")
    if patient.opposed_to_feeding:
        return Skip(Reason.PATIENT_OPPOSED, "opposed_to_feeding is set")
    if patient.deceased_at is not None:
        return Skip(Reason.PATIENT_DECEASED, "deceased_at is set")
    if document.status != VALIDATED:
        status = printable(document.status or "empty", 40)
        return Skip(Reason.DOCUMENT_NOT_VALIDATED, f"status is {status}, not VALIDATED")
    if not document.finess_geo:
        return Skip(Reason.SITE_UNKNOWN, "finess_geo is empty")
    if settings.structure.site(document.finess_geo) is None:
        return Skip(Reason.SITE_UNKNOWN, f"finess_geo {printable(document.finess_geo, 40)} is not in structure.sites")
    type_problem = _type_problem(document.type_code, settings.rules.allowed_type_codes) or _class_problem(
        document.type_code, settings.submission.class_code_fallback)
    if type_problem:
        return Skip(Reason.TYPE_NOT_ALLOWED, type_problem)
    if document.activity:
        try:
            activity.content_type(document.activity)
        except activity.ActivityError as exc:
            return Skip(Reason.ACTIVITY_INVALID, f"dmp_document.activity {exc}")
    missing = _missing_birth_traits(patient)
    if missing:
        return Skip(Reason.IDENTITY_INCOMPLETE, missing)
    missing = _missing_metadata(document)
    if missing:
        return Skip(Reason.METADATA_MISSING, missing)
    too_long = _too_long(document, patient) or value_too_long(settings.structure, document, patient)
    if too_long:
        return Skip(Reason.VALUE_TOO_LONG, too_long)
    return None


def check_content(
    document: Document, content: bytes | None, settings: Settings, *, error: str | None = None
) -> Skip | None:
    """None if the bytes can be wrapped in a CDA as the document's mime type, else why not.

    `error` is the reason the content could not be read (give the exception class or strerror, not a
    path that may contain a name).
    """
    if error is not None or content is None:
        return check_content_probe(document, None, settings, error=error)
    return check_content_probe(document, probe_of(content), settings)


def check_content_probe(
    document: Document, probe: tuple | None, settings: Settings, *, error: str | None = None
) -> Skip | None:
    """`check_content` from the content's probe (`probe_of`: size, first PROBE_HEAD bytes, last PROBE_TAIL
    bytes, PROBE_XREF bytes where a PDF's startxref points): all it looks at."""
    if error is not None or probe is None:
        return Skip(Reason.CONTENT_MISSING, f"content unreadable: {error or 'no content'}")
    size, head, tail, at_xref = probe
    if not size:
        return Skip(Reason.CONTENT_INVALID, "content is empty (0 bytes)")
    limit = settings.rules.max_document_bytes
    if size > limit:
        return Skip(Reason.CONTENT_INVALID, f"content is {size} bytes, over rules.max_document_bytes {limit}")
    mime = (document.mime_type or "").strip().lower()
    if ";" in mime:  # the XDS mimeType and the CDA's mediaType take the bare type only
        return Skip(Reason.CONTENT_INVALID, f"mime_type {printable(mime, 60)} has parameters: give the bare type")
    if mime == "application/pdf":
        if not head.startswith(b"%PDF-"):
            return Skip(Reason.CONTENT_INVALID, "mime_type is application/pdf but content lacks the %PDF- header")
        if b"%%EOF" not in tail:
            return Skip(Reason.CONTENT_INVALID, "PDF content has no %%EOF at its end (truncated?)")
        if pdf_xref_offset(tail, size) is None or not _XREF_TARGET.match(at_xref):
            return Skip(Reason.CONTENT_INVALID, "PDF content has no cross-reference table where its startxref points "
                                                "(not a PDF, or damaged)")
        return None
    if mime == "text/xml":
        if not _looks_like_xml(head):
            return Skip(Reason.CONTENT_INVALID, "mime_type is text/xml but content does not start with a tag")
        return None
    shown = printable(mime, 60) or "empty"
    supported = ", ".join(SUPPORTED_MIME_TYPES)
    return Skip(Reason.CONTENT_INVALID, f"mime_type {shown} is not supported ({supported})")


PROBE_XREF = 32  # bytes read where a PDF's startxref points
_STARTXREF = re.compile(rb"startxref\s+(\d{1,15})\s+%%EOF")
_XREF_TARGET = re.compile(rb"\s*(xref|\d+\s+\d+\s+obj)\b")  # a classic table or a cross-reference stream


def pdf_xref_offset(tail: bytes, size: int) -> int | None:
    """Where the last `startxref` of a PDF's tail points, if inside the file after its header."""
    found = _STARTXREF.findall(tail)
    if not found:
        return None
    offset = int(found[-1])
    return offset if 5 <= offset < size else None


def probe_of(content: bytes) -> tuple[int, bytes, bytes, bytes]:
    """The probe `check_content_probe` looks at, from content in memory."""
    tail = content[-PROBE_TAIL:]
    offset = pdf_xref_offset(tail, len(content))
    at_xref = content[offset:offset + PROBE_XREF] if offset is not None else b""
    return len(content), content[:PROBE_HEAD], tail, at_xref


# --- helpers ---------------------------------------------------------------------------------


def _environment_mismatch(oid: str | None, environment: str) -> str | None:
    if environment == "production" and oid in ins.TEST_OIDS:
        return f"INS OID {oid} is a test/demo OID but dmp.environment is production"
    if environment != "production" and oid in ins.REAL_OIDS:
        return f"INS OID {oid} is a real NIR/NIA OID but dmp.environment is {environment}"
    return None


def _type_problem(type_code: str | None, allowed: tuple[str, ...]) -> str | None:
    if not type_code:
        return "type_code is empty"
    if not is_type_code(type_code):
        return f"type_code {printable(type_code, 40)} is not in JDV_J07 (XDS typeCode CI-SIS)"
    if allowed and type_code not in allowed:
        return f"type_code {printable(type_code, 40)} is not in rules.allowed_type_codes"
    return None


def _class_problem(type_code: str, fallback: str | None) -> str | None:
    """The DMP's classCode comes from ASS_X16 (the map of the DMP's own type codes, JDV_J66): a type it does
    not list is one the DMP does not take, unless the operator chose a fallback class."""
    if fallback is None and dmp_class_code(type_code) is None:
        return (f"type_code {type_code} is not in {CLASS_MAP} (the DMP's typeCode -> classCode map); "
                "see submission.class_code_fallback")
    return None


def _missing_birth_traits(patient: Patient) -> str | None:
    # With an INS, the CI-SIS schematron requires the birth name, birth given names, birth date,
    # INSEE code of the birth place and sex: the DMP would reject the CDA without them.
    for column in ("birth_family_name", "birth_given_names", "birth_date", "birth_place_code", "sex"):
        if not getattr(patient, column):
            return f"dmp_patient.{column} is empty"
    if patient.sex not in SEXES:
        return "dmp_patient.sex must be M, F or U"
    return None


def _missing_metadata(document: Document) -> str | None:
    if not document.author_rpps:
        return "dmp_document.author_rpps is empty"
    if not _RPPS.match(document.author_rpps):
        return "dmp_document.author_rpps is not 11 digits"
    if document.legal_authenticator_rpps and not _RPPS.match(document.legal_authenticator_rpps):
        return "dmp_document.legal_authenticator_rpps is not 11 digits"
    if not document.author_family_name:  # the CDA author's assignedPerson needs a family name
        return "dmp_document.author_family_name is empty"
    # title may be empty: the builders fall back to the type code's display name
    for column in ("created_at", "service_start"):
        if not getattr(document, column):
            return f"dmp_document.{column} is empty"
    return None


# ebRIM slot values and names are at most 256 characters; HL7 v2 datatypes (XCN, PID-5) add ~60 around the
# names. A value over these limits would fail the whole submission set, so the document is skipped alone.
_NAME_LIMIT = 180
_TITLE_LIMIT = 255


def _too_long(document: Document, patient: Patient) -> str | None:
    author = len(document.author_family_name or "") + len(document.author_given_name or "")
    if author > _NAME_LIMIT:
        return f"dmp_document.author_family_name + author_given_name exceed {_NAME_LIMIT} characters"
    birth = len(patient.birth_family_name or "") + len(patient.birth_given_names or "")
    if birth > _NAME_LIMIT:
        return f"dmp_patient.birth_family_name + birth_given_names exceed {_NAME_LIMIT} characters"
    if len(document.title or "") > _TITLE_LIMIT:
        return f"dmp_document.title exceeds {_TITLE_LIMIT} characters"
    return None


def _looks_like_xml(content: bytes) -> bool:
    head = content[:PROBE_HEAD].removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"<")


# --- corrections of documents already in the DMP (issue 17) ------------------------------------------


def masking(document: Document) -> str:
    """The DMP masking codes of a document as the ledger records them (`MASQUE_PS,INVISIBLE_PATIENT`; "" none)."""
    return ",".join(c.code for c in confidentiality_codes(document)[1:])


def unmask_due_at(document: Document, first_fed_at: dt.datetime | None, settings: Settings) -> dt.datetime | None:
    """When a document fed INVISIBLE_PATIENT becomes visible to the patient (EXI 08), naive UTC: at the
    announcement consultation (`announced_at`, local time), else `rules.unmask_after_days` after the document
    was first fed. None: not invisible to the patient, or never fed."""
    if not document.invisible_to_patient:
        return None
    if document.announced_at is not None:
        local = document.announced_at.replace(tzinfo=LOCAL_TZ)
        return local.astimezone(dt.UTC).replace(tzinfo=None)
    if first_fed_at is None:
        return None
    return first_fed_at + dt.timedelta(days=settings.rules.unmask_after_days)


def as_sent(document: Document, first_fed_at: dt.datetime | None, settings: Settings, now: dt.datetime) -> Document:
    """The document as it is to be in the DMP now: INVISIBLE_PATIENT dropped once its unmask is due (the
    store keeps its flag; the DMP entry is replaced without the code)."""
    due = unmask_due_at(document, first_fed_at, settings)
    if due is not None and due <= now:
        return dataclasses.replace(document, invisible_to_patient=False)
    return document


def with_masking(document: Document, codes: str) -> Document:
    """The document with the masking flags of `codes` (as `masking` writes them): a journaled entry is rebuilt
    with the codes it was journaled with, whatever the store's flags say now."""
    present = set(filter(None, codes.split(",")))
    return dataclasses.replace(document, mask_professionals="MASQUE_PS" in present,
                               invisible_to_patient="INVISIBLE_PATIENT" in present,
                               invisible_to_legal_representatives="INVISIBLE_REPRESENTANTS_LEGAUX" in present)
