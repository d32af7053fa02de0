"""One HL7 v2 message of the ANS volet "Transmission de documents CDA en HL7v2" (ORU^R01 v2.5, MDM^T02/T10/T04
v2.6) read into the rows of the store contract, and the ACK that answers it.

Parsing is python-hl7's (`hl7`: lenient splitting, no length validation, so a multi-megabyte ED field is just a
string); what the guide requires is checked here, each refusal naming the field (`PID^1^3`) and never a value of
the message (it is patient data). Segment separators: CR as HL7 says, LF or CRLF accepted too (the guide's own
example files use LF).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import hl7

from connector.payload.cda import HL7 as V3_NS, INS_OIDS
from connector.payload.validate import parse_untrusted

INITIAL, REPLACEMENT, DELETION = "initial", "replacement", "deletion"

# (message type, trigger event) -> the action; ORC-1 and OBX-11 must agree with it (guide: "rejeté par la PFI").
_MDM_EVENTS = {"T02": INITIAL, "T10": REPLACEMENT, "T04": DELETION}
_ORC_1 = {"NW": INITIAL, "RO": REPLACEMENT, "CA": DELETION}
_OBX_11 = {"F": INITIAL, "C": REPLACEMENT, "D": DELETION}

# MSH-18 (HL7 table 0211) -> Python codec. Empty: UTF-8 (what the guide's examples declare).
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "ASCII": "ascii", "8859/1": "iso8859-1",
            "8859/15": "iso8859-15"}

# The OBX-3 codes of the guide's MetaDMPMSS table that the store contract carries (the others, MSSanté routing
# and acknowledgement requests, are not the DMP's business).
MASKING_FLAGS = {"MASQUE_PS": "mask_professionals", "INVISIBLE_PATIENT": "invisible_to_patient",
                 "INVISIBLE_REP_LEGAUX": "invisible_to_legal_representatives"}
DESTINED_TO_DMP = "DESTDMP"
PARIS = ZoneInfo("Europe/Paris")


class Refused(Exception):
    """A message answered AE (`ack_code`) or AR, with the ERR segment's location, HL7 table 0357 code and text.
    The text names fields, never their values."""

    def __init__(self, text: str, location: str = "", code: str = "207", ack_code: str = "AE"):
        super().__init__(text)
        self.text, self.location, self.code, self.ack_code = text, location, code, ack_code


_ERROR_NAMES = {"100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
                "103": "Table value not found", "200": "Unsupported message type", "201": "Unsupported event code",
                "203": "Unsupported version id", "204": "Unknown key identifier", "206": "Application record locked",
                "207": "Application internal error"}


@dataclass(frozen=True)
class Header:
    """MSH, read before anything else (the ACK needs it even when the rest is refused)."""

    field_separator: str = "|"
    encoding: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger: str = ""
    control_id: str = ""
    version: str = ""
    charset: str = ""

    @property
    def sender(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}"


@dataclass(frozen=True)
class Intake:
    """What one accepted message asks: `action` on the document whose CDA id is `unique_id`."""

    header: Header
    action: str  # INITIAL, REPLACEMENT, DELETION
    unique_id: str  # ClinicalDocument/id: root, or root^extension
    parent_id: str | None  # the replaced document (TXA-13, else the CDA's relatedDocument RPLC)
    set_id: str | None  # ClinicalDocument/setId
    cda: bytes
    patient: dict  # dmp_patient columns
    document: dict  # dmp_document columns but document_id and version
    digest: str  # of the message without MSH (a resend whose MSH-7 changed is the same message)
    warnings: list[str] = field(default_factory=list)

    @property
    def cda_digest(self) -> str:
        return hashlib.sha256(self.cda).hexdigest()


def read_header(raw: bytes) -> Header:
    """MSH of a message (bytes), with its encoding characters checked; raises Refused."""
    if not raw.startswith(b"MSH"):
        raise Refused("the message does not start with an MSH segment", "", "100")
    first = re.split(rb"\r|\n", raw, maxsplit=1)[0].decode("iso8859-1")
    separator, encoding = first[3:4], first[4:8]
    if (len(encoding) != 4 or len(set(separator + encoding)) != 5
            or any(c.isalnum() or c in " \t\r\n" for c in separator + encoding)):
        raise Refused("MSH-1/MSH-2: the field separator and the four encoding characters must be distinct "
                      "non-alphanumeric characters (the guide's are |^~\\&)", "MSH^1^2", "102")
    fields = first.split(separator)
    if len(fields) > 2 and not fields[1].startswith(encoding):
        raise Refused("MSH-2: malformed encoding characters", "MSH^1^2", "102")

    def f(n: int, component: int = 1) -> str:
        value = fields[n - 1] if len(fields) >= n else ""
        parts = value.split(encoding[0])
        return parts[component - 1].strip() if len(parts) >= component else ""

    return Header(separator, encoding, f(3), f(4), f(5), f(6), f(9, 1), f(9, 2), f(10), f(12, 1), f(18))


def read(raw: bytes, max_document_bytes: int) -> Intake:
    """The message (one MLLP block's bytes) as store rows; raises Refused (AE) naming what is wrong."""
    header = read_header(raw)
    codec = CHARSETS.get(header.charset.upper())
    if codec is None:
        raise Refused(f"MSH-18: character set not supported (supported: {', '.join(c for c in CHARSETS if c)})",
                      "MSH^1^18", "103")
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise Refused(f"the message is not valid {codec} (MSH-18)", "MSH^1^18", "102") from None
    text, payloads = _set_aside(text, header)
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
    if any(not re.fullmatch(r"[A-Z][A-Z0-9]{2}", s[:3]) or (len(s) > 3 and s[3] != header.field_separator)
           for s in segments):
        raise Refused("a segment does not start with a segment name and the field separator", "", "100")
    body = "\r".join(segments[1:])
    try:
        message = hl7.parse("\r".join(segments))
    except Exception:  # python-hl7 raises what it meets (ParseException, IndexError…): all mean malformed
        raise Refused("the message cannot be parsed as HL7 v2", "", "100") from None
    m = _Message(message, payloads)

    action = _action(header, m)
    pid = m.one("PID")
    patient = _patient(m, pid)
    document_obx = _document_obx(m)
    cda = _ed_bytes(m, document_obx, max_document_bytes)
    root = _cda_root(cda)
    unique_id = _cda_id(root)
    parent_id = None
    if header.message_type == "MDM":
        txa = m.one("TXA")
        txa12 = m.get(txa, 12)
        if not txa12:
            raise Refused("TXA-12 (the document's unique id) is empty", "TXA^1^12", "101")
        if txa12 not in _txa_forms(root):
            raise Refused("TXA-12 differs from the CDA's ClinicalDocument/id", "TXA^1^12", "207")
        if action == REPLACEMENT:
            parent_id = m.get(txa, 13)
            if not parent_id:
                raise Refused("TXA-13 (the replaced document's id) is required with T10", "TXA^1^13", "101")
    if parent_id is None and action == REPLACEMENT:
        parent_id = _cda_parent(root)
    # A deletion too: its CDA is not ignored, the guide takes the document to delete from it ("l'id du document à
    # supprimer est extrait du CDA à partir de l'élément clinicalDocument@id", exemples.md) and wants PID-3
    # "identique aux identifiants de patient portés par le document CDA" in every message (profils-messages.md).
    _check_ins(root, patient)
    warnings = []
    document = _document(m, header, root, document_obx, warnings)
    document["status"] = "CANCELLED" if action == DELETION else "VALIDATED"
    digest = hashlib.sha256(body.encode("utf-8"))
    for _, data in sorted(payloads.items()):
        digest.update(b"\x1c")
        digest.update(data)
    digest = digest.hexdigest()
    return Intake(header, action, unique_id, parent_id, _set_id(root), cda, patient, document, digest, warnings)


def _set_aside(text: str, header: Header) -> tuple[str, dict[int, bytes]]:
    """`text` without the data of its ED fields (OBX-5.5), and those data by OBX rank (0: the first OBX).

    python-hl7 splits and copies the whole message at each level (segments, fields, repetitions, components), and
    so would a multi-megabyte base64 CDA each time; set aside here with a few memchr-fast `find`s, it is copied
    once. Data holding the escape character, or not ASCII (not base64 either way), stay in place, read as
    before."""
    sep = header.field_separator
    component, repetition, escape, subcomponent = header.encoding
    kept, payloads, at, rank, start = [], {}, 0, -1, 0
    while (start := text.find("OBX", start)) >= 0:
        if start and text[start - 1] not in "\r\n":
            start += 3
            continue
        rank += 1
        end = min((i for i in (text.find("\r", start), text.find("\n", start)) if i >= 0), default=len(text))
        fields = [start]
        while len(fields) < 6 and (i := text.find(sep, fields[-1], end)) >= 0:
            fields.append(i + 1)
        start = end
        if len(fields) < 6 or text[fields[2]:fields[3] - 1].strip() != "ED":
            continue
        field_end = text.find(sep, fields[5], end)
        field_end = end if field_end < 0 else field_end
        data_start = fields[5]
        for _ in range(4):
            data_start = text.find(component, data_start, field_end) + 1
            if not data_start:
                break
        if not data_start or text.find(repetition, fields[5], data_start) >= 0:
            continue
        data_end = min((i for i in (text.find(c, data_start, field_end) for c in (component, repetition, subcomponent))
                        if i >= 0), default=field_end)
        data = text[data_start:data_end]
        if not data.isascii() or escape in data:
            continue
        kept.append(text[at:data_start])
        at, payloads[rank] = data_end, data.strip().encode("ascii")
    return ("".join(kept) + text[at:], payloads) if payloads else (text, payloads)


class _Message:
    """Field access over python-hl7's tree: 1-based field, repetition, component, subcomponent; '' when absent;
    HL7 escapes (\\F\\, \\S\\…) undone. `payloads`: the ED data set aside before parsing (`_set_aside`)."""

    def __init__(self, message, payloads: dict[int, bytes] | None = None):
        self.message = message
        self.payloads = payloads or {}

    def ed_data(self, obx) -> bytes:
        """OBX-5.5 of `obx`, set aside or in place (UTF-8: base64 is ASCII, anything else is refused after)."""
        rank = next(i for i, s in enumerate(self.all("OBX")) if s is obx)
        return self.payloads[rank] if rank in self.payloads else self.get(obx, 5, 1, 5).encode("utf-8")

    def all(self, name: str) -> list:
        return [s for s in self.message if str(s[0]) == name]

    def one(self, name: str):
        found = self.all(name)
        if not found:
            raise Refused(f"segment {name} missing", name, "100")
        return found[0]

    def get(self, segment, field_: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        try:
            value = segment.extract_field(1, field_, rep, comp, sub)
        except (IndexError, KeyError):
            return ""
        return self.message.unescape(str(value)).strip() if value else ""

    def repetitions(self, segment, field_: int) -> range:
        count = 0
        while True:
            try:
                segment.extract_field(1, field_, count + 1, 1, 1)
            except (IndexError, KeyError):
                return range(1, count + 1)
            count += 1
            if count > 100:
                return range(1, count + 1)


def _action(header: Header, m: _Message) -> str:
    if header.message_type == "ORU":
        if header.trigger != "R01":
            raise Refused("ORU: only R01 is supported", "MSH^1^9", "201")
        action = None
    elif header.message_type == "MDM":
        action = _MDM_EVENTS.get(header.trigger)
        if action is None:
            raise Refused("MDM: only T02, T10 and T04 are supported", "MSH^1^9", "201")
    else:
        raise Refused("message type not supported (ORU^R01, MDM^T02/T10/T04)", "MSH^1^9", "200")
    if not re.fullmatch(r"2\.[5-9](\.\d+)?", header.version):
        raise Refused("MSH-12: HL7 version not supported (2.5 for ORU, 2.6 for MDM)", "MSH^1^12", "203")
    orc = _ORC_1.get(m.get(m.one("ORC"), 1))
    if orc is None:
        raise Refused("ORC-1 must be NW, RO or CA", "ORC^1^1", "103")
    if action is not None and orc != action:
        raise Refused("ORC-1 disagrees with the MDM trigger event", "ORC^1^1", "103")
    return orc


def _document_obx(m: _Message):
    """The OBX carrying the CDA: the first ED OBX whose OBX-3 is not one of the guide's MetaDMPMSS codes."""
    for obx in m.all("OBX"):
        if m.get(obx, 2) == "ED" and m.get(obx, 3, 1, 3) != "MetaDMPMSS":
            return obx
    raise Refused("no OBX of type ED carrying the document", "OBX", "100")


def _ed_bytes(m: _Message, obx, limit: int) -> bytes:
    if m.get(obx, 5, 1, 4).lower() != "base64":
        raise Refused("OBX-5.4 must be Base64 (the CDA encoded in base64)", "OBX^1^5", "102")
    data = m.ed_data(obx)
    if len(data) * 3 // 4 > limit:
        raise Refused(f"the document is over rules.max_document_bytes {limit}", "OBX^1^5", "102")
    try:
        # Padding is often left out by senders and carries no data: it is added, anything else is refused.
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("OBX-5.5 is not valid base64", "OBX^1^5", "102") from None


def _cda_root(cda: bytes):
    try:
        root = parse_untrusted(cda).getroot()
    except ValueError as exc:
        raise Refused(f"OBX-5: the document is not a CDA (OBX-5.5 must carry the CDA-R2 document, in base64): {exc}",
                      "OBX^1^5", "102") from None
    if root.tag != f"{{{V3_NS}}}ClinicalDocument":
        raise Refused("OBX-5: the document is not an HL7 v3 ClinicalDocument", "OBX^1^5", "102")
    return root


_NS = {"v3": V3_NS}


def _cda_id(root) -> str:
    ids = root.findall("v3:id", _NS)
    if len(ids) != 1 or not ids[0].get("root"):
        raise Refused("OBX-5: the CDA has no ClinicalDocument/id", "OBX^1^5", "101")
    return _ii(ids[0])


def _ii(element) -> str:
    extension = element.get("extension")
    return element.get("root") + (f"^{extension}" if extension else "")


def _txa_forms(root) -> set[str]:
    """TXA-12.1 as the guide fills it: the id's extension if any, else its root."""
    element = root.find("v3:id", _NS)
    return {element.get("extension") or element.get("root")}


def _cda_parent(root) -> str | None:
    parents = root.xpath("v3:relatedDocument[@typeCode='RPLC']/v3:parentDocument/v3:id", namespaces=_NS)
    return _ii(parents[0]) if parents and parents[0].get("root") else None


def _set_id(root) -> str | None:
    element = root.find("v3:setId", _NS)
    return _ii(element) if element is not None and element.get("root") else None


def _check_ins(root, patient: dict) -> None:
    """The CDA's INS must be PID-3's (guide: "Le PID-3 doit être identique aux identifiants de patient portés par
    le document CDA")."""
    ids = root.xpath("v3:recordTarget/v3:patientRole/v3:id", namespaces=_NS)
    cda_ins = {(i.get("root"), i.get("extension")) for i in ids if i.get("root") in INS_OIDS}
    pid_ins = {(patient["ins_oid"], patient["ins_matricule"])} if patient["ins_matricule"] else set()
    if cda_ins != pid_ins:
        raise Refused("the CDA's INS (recordTarget/patientRole/id) differs from PID-3's", "PID^1^3", "207")


def ins_pseudonym(ins_oid: str | None, ins: str) -> str:
    """The patient id of a patient known only by its INS: a stable pseudonym, so that logs and reports (which
    show patient ids) never show the INS."""
    return "INS-" + hashlib.sha256(f"{ins_oid}|{ins}".encode()).hexdigest()[:24]


def _patient(m: _Message, pid) -> dict:
    ins, ins_oid, ipp = None, None, None
    for rep in m.repetitions(pid, 3):
        kind, oid = m.get(pid, 3, rep, 5), m.get(pid, 3, rep, 4, 2)
        if kind.startswith("INS") or oid in INS_OIDS:
            ins, ins_oid = m.get(pid, 3, rep, 1), oid
        elif kind == "PI" and ipp is None:
            ipp = m.get(pid, 3, rep, 1)
    if ipp is None:
        if ins is None:
            raise Refused("PID-3 has neither an INS nor an IPP (identifier type PI)", "PID^1^3", "101")
        # No IPP: a stable pseudonym of the INS, so that logs and reports (which show patient ids) never show it.
        ipp = ins_pseudonym(ins_oid, ins)
    if len(ipp) > 64:
        raise Refused("PID-3: the IPP is longer than 64 characters", "PID^1^3", "102")
    row = {"patient_id": ipp, "ins_matricule": ins, "ins_oid": ins_oid, "identity_status": m.get(pid, 32) or None,
           "birth_family_name": None, "birth_given_names": None, "used_family_name": None, "used_given_name": None,
           "sex": m.get(pid, 8) or None, "birth_date": _date(m.get(pid, 7), "PID^1^7"), "birth_place_code": None}
    for rep in m.repetitions(pid, 5):
        kind = m.get(pid, 5, rep, 7)
        if kind == "L":  # nom de naissance; XPN-2 first birth given name, XPN-3 all of them (ANS PAM)
            row["birth_family_name"] = m.get(pid, 5, rep, 1) or None
            row["birth_given_names"] = m.get(pid, 5, rep, 3) or m.get(pid, 5, rep, 2) or None
        elif kind == "D":  # nom utilisé
            row["used_family_name"] = m.get(pid, 5, rep, 1) or None
            row["used_given_name"] = m.get(pid, 5, rep, 2) or None
    for rep in m.repetitions(pid, 11):
        if m.get(pid, 11, rep, 7) == "BDL":  # birth place: XAD-9 is its INSEE code
            row["birth_place_code"] = m.get(pid, 11, rep, 9) or None
    if row["sex"] and len(row["sex"]) != 1:
        raise Refused("PID-8: administrative sex must be one character (M, F, U…)", "PID^1^8", "103")
    if row["identity_status"] and len(row["identity_status"]) > 8:
        raise Refused("PID-32: identity reliability code too long", "PID^1^32", "103")
    if row["ins_matricule"] and len(row["ins_matricule"]) > 15:
        raise Refused("PID-3: the INS is longer than 15 characters", "PID^1^3", "102")
    if m.get(pid, 30) == "Y":
        row["deceased_at"] = _date(m.get(pid, 29), "PID^1^29") or dt.date.today()
    return row


def _document(m: _Message, header: Header, root, obx, warnings: list) -> dict:
    """dmp_document columns from the CDA header first (the XDS metadata must agree with it), then the message."""
    sender = next((p for p in m.all("PRT") if m.get(p, 4) == "SB"), None)
    row = cda_document(root)
    row["type_code"] = row["type_code"] or m.get(obx, 3) or None
    row["title"] = row["title"] or m.get(obx, 3, 1, 2) or None
    row["activity"] = m.get(m.all("PV1")[0], 2) or None if m.all("PV1") else None
    if sender is not None and _rpps(m.get(sender, 5)):  # PRT SB's author, else the CDA's first author
        row["author_rpps"] = _rpps(m.get(sender, 5))
        row["author_family_name"] = m.get(sender, 5, 1, 2) or None
        row["author_given_name"] = m.get(sender, 5, 1, 3) or None
    if sender is not None and m.get(sender, 8, 1, 7) == "FINEG" and m.get(sender, 8, 1, 10):
        row["finess_geo"] = _finess(m.get(sender, 8, 1, 10))  # PRT's FINESS before the CDA's
    for flag, column in MASKING_FLAGS.items():
        row[column] = _flag(m, flag) is True
    row["destined_to_dmp"] = _flag(m, DESTINED_TO_DMP) is not False  # absent: the DMP (the connector's purpose)
    check_lengths(row)
    return row


def cda_document(root) -> dict:
    """The dmp_document columns a CDA's header gives (None where it has nothing): the intakes fill the store row
    from it first, so that the XDS metadata agrees with the CDA."""
    def cda(xpath: str, attribute: str | None = None) -> str | None:
        found = root.xpath(xpath, namespaces=_NS)
        if not found:
            return None
        value = found[0].get(attribute) if attribute else " ".join("".join(found[0].itertext()).split())
        return value or None

    author = "v3:author/v3:assignedAuthor"
    facility = root.xpath("v3:componentOf/v3:encompassingEncounter/v3:location/v3:healthCareFacility/v3:id"
                          "[@root='1.2.250.1.71.4.2.2']", namespaces=_NS)
    row = {
        "type_code": cda("v3:code", "code"),
        "title": cda("v3:title"),
        "created_at": _timestamp(cda("v3:effectiveTime", "value"), "ClinicalDocument/effectiveTime"),
        "service_start": _timestamp(cda("v3:documentationOf/v3:serviceEvent/v3:effectiveTime/v3:low", "value"),
                                    "serviceEvent/effectiveTime/low"),
        "service_stop": _timestamp(cda("v3:documentationOf/v3:serviceEvent/v3:effectiveTime/v3:high", "value"),
                                   "serviceEvent/effectiveTime/high"),
        "author_rpps": _rpps(cda(f"{author}/v3:id", "extension")),
        "author_family_name": cda(f"{author}/v3:assignedPerson/v3:name/v3:family"),
        "author_given_name": cda(f"{author}/v3:assignedPerson/v3:name/v3:given"),
        "author_specialty_code": None,
        "legal_authenticator_rpps": _rpps(cda("v3:legalAuthenticator/v3:assignedEntity/v3:id", "extension")),
        "finess_geo": _finess(facility[0].get("extension")) if facility else None,
        "mime_type": "text/xml",
        "activity": None,
    }
    if row["service_start"] is None:
        row["service_start"] = row["created_at"]
    return row


def check_lengths(row: dict) -> None:
    """The store contract's text lengths (a longer value would fail the insert, or be cut by some databases)."""
    for key, limit in (("type_code", 32), ("finess_geo", 9), ("title", 500), ("author_family_name", 200),
                       ("author_given_name", 200), ("activity", 64)):
        if row.get(key) is not None and len(row[key]) > limit:
            raise Refused(f"{key}: longer than the store contract's {limit} characters", "", "102")


def _flag(m: _Message, code: str) -> bool | None:
    for obx in m.all("OBX"):
        if m.get(obx, 3) == code:
            value = m.get(obx, 5)
            if value not in ("Y", "N"):
                raise Refused(f"OBX {code}: OBX-5 must be Y or N", "OBX^1^5", "103")
            return value == "Y"
    return None


def _rpps(value: str | None) -> str | None:
    """An RPPS from an ANS national PS identifier (IDNPS: '8' + the 11-digit RPPS), or as given."""
    if not value:
        return None
    if len(value) == 12 and value.startswith("8") and value.isdigit():
        return value[1:]
    return value[:11] if len(value) <= 11 else None


def _finess(value: str | None) -> str | None:
    """A FINESS géographique from PRT-8.10 or a CDA id extension ('1' + FINESS in the ANS national structure id)."""
    if not value:
        return None
    return value[1:] if len(value) == 10 and value.startswith("1") else value


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def _timestamp(value: str | None, where: str) -> dt.datetime | None:
    """An HL7 TS (YYYYMMDD[HHMM[SS[.S]]][+ZZZZ]) as the store's local time (Europe/Paris)."""
    if not value:
        return None
    match = _TS.match(value.strip())
    if not match:
        raise Refused(f"{where}: not an HL7 date-time", "OBX^1^5", "102")
    y, mo, d, h, mi, s, zone = match.groups()
    try:
        parsed = dt.datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        raise Refused(f"{where}: not a valid date-time", "OBX^1^5", "102") from None
    if zone:
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * (1 if zone[0] == "+" else -1)
        parsed = parsed.replace(tzinfo=dt.timezone(offset)).astimezone(PARIS).replace(tzinfo=None)
    return parsed


def _date(value: str, where: str) -> dt.date | None:
    if not value:
        return None
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})\d*", value)
    try:
        return dt.date(*map(int, match.groups())) if match else _bad_date(where)
    except ValueError:
        return _bad_date(where)


def _bad_date(where: str):
    raise Refused(f"{where.replace('^1^', '-')}: not a date (YYYYMMDD)", where, "102")


# --- acknowledgements -------------------------------------------------------------------------------------


def ack(header: Header | None, code: str, refused: Refused | None = None, control_id: str = "") -> bytes:
    """The ACK (UTF-8 bytes, CR-separated segments) of a message whose MSH is `header` (None if unreadable)."""
    h = header or Header()
    esc = _Escaper(h.field_separator, h.encoding)
    now = dt.datetime.now(PARIS).strftime("%Y%m%d%H%M%S")
    sep = h.field_separator
    trigger = h.trigger or ""
    msh = sep.join(["MSH", h.encoding, esc(h.receiving_application), esc(h.receiving_facility),
                    esc(h.sending_application), esc(h.sending_facility), now, "",
                    f"ACK{h.encoding[0]}{esc(trigger)}{h.encoding[0]}ACK", control_id, "P",
                    esc(h.version) or "2.5", "", "", "", "", "FRA", "UNICODE UTF-8"])
    segments = [msh, sep.join(["MSA", code, esc(h.control_id)])]
    if refused is not None:
        c = h.encoding[0]
        location = c.join(esc(part) for part in refused.location.split("^")) if refused.location else ""
        condition = c.join([refused.code, esc(_ERROR_NAMES.get(refused.code, "")), "HL70357"])
        severity = "E"
        text = esc(refused.text)
        # ERR-2 location, ERR-3 condition (table 0357), ERR-4 severity, ERR-8 user message
        segments.append(sep.join(["ERR", "", location, condition, severity, "", "", "", text]))
    return ("\r".join(segments) + "\r").encode("utf-8")


class _Escaper:
    def __init__(self, separator: str, encoding: str):
        component, repetition, escape, subcomponent = encoding
        self.table = {escape: f"{escape}E{escape}", separator: f"{escape}F{escape}",
                      component: f"{escape}S{escape}", repetition: f"{escape}R{escape}",
                      subcomponent: f"{escape}T{escape}"}

    def __call__(self, value: str) -> str:
        value = "".join(self.table.get(c, c) for c in value)
        return "".join(c for c in value if c >= " ")  # no CR, LF or control character in a field
