"""HL7 v2 datatypes as XDS metadata carries them (CX, XCN, XON, DTM), with HL7 escaping.

XDS slot values such as authorPerson or sourcePatientId are HL7 v2 strings: components separated
by `^`, sub-components by `&`. Free text (names) must escape those delimiters, otherwise a name like
"A^B" would shift every following component.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

# Naive datetimes from the store are the hospital's wall-clock time.
LOCAL_TZ = ZoneInfo("Europe/Paris")

# OIDs of the French national identifiers (ANS).
RPPS_AUTHORITY = "1.2.250.1.71.4.2.1"  # idNat of health professionals ("8" + RPPS)
FINESS_AUTHORITY = "1.2.250.1.71.4.2.2"  # idNat of structures ("1" + FINESS)

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def escape(text: str) -> str:
    """HL7 v2 escaping of the delimiters `| ^ & ~ \\` in free text."""
    return text.translate(_ESCAPE_TABLE)


_UNESCAPES = {escaped: plain for plain, escaped in _ESCAPES.items()}
_ESCAPED = re.compile("|".join(re.escape(escaped) for escaped in _UNESCAPES))


def unescape(text: str) -> str:
    """The inverse of `escape`, read left to right (replacing one escape after the other misread `\\T\\F\\T\\`)."""
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group()], text)


def hd(oid: str) -> str:
    """An ISO assigning authority (HD with empty namespace): `&<oid>&ISO`."""
    return f"&{oid}&ISO"


def cx(identifier: str, authority_oid: str, type_code: str) -> str:
    """CX: `<id>^^^&<oid>&ISO^<type>`, e.g. an INS (`NH`) or an IPP (`PI`)."""
    return f"{escape(identifier)}^^^{hd(authority_oid)}^{type_code}"


def parse_cx(value: str) -> tuple[str, str | None, str | None]:
    """(id, assigning authority OID, type code) of a CX string; missing parts are None."""
    parts = value.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    oid = authority[1] if len(authority) > 1 and authority[1] else None
    type_code = parts[4] if len(parts) > 4 and parts[4] else None
    return unescape(parts[0]), oid, type_code


def xcn_professional(rpps: str, family: str | None = None, given: str | None = None) -> str:
    """XCN of a health professional identified by RPPS:
    `8<RPPS>^FAMILY^Given^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS`."""
    return "^".join(
        ["8" + rpps, escape(family or ""), escape(given or ""), "", "", "", "", "",
         hd(RPPS_AUTHORITY), "D", "", "", "IDNPS"]
    )


def xcn_id(value: str) -> str:
    """The identifier (XCN.1) of an XCN string, national prefix (`8`) included."""
    return unescape(value.split("^", 1)[0])


def xon_site(name: str, finess_geo: str) -> str:
    """XON of a site identified by its FINESS géographique:
    `<name>^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1<FINESS>`."""
    return "^".join([escape(name), "", "", "", "", hd(FINESS_AUTHORITY), "IDNST", "", "", "1" + finess_geo])


def xon_finess(value: str) -> str | None:
    """The FINESS carried by an XON built by `xon_site` (XON.10 without its `1` prefix), else None."""
    parts = value.split("^")
    if len(parts) < 10 or parts[6] != "IDNST" or not parts[9].startswith("1"):
        return None
    return parts[9][1:]


def xon_structure_id(value: str) -> str | None:
    """The national structure id of an XON (XON.10 of type IDNST: `1`+FINESS, `3`+SIRET, `4`+RPPS+rank…), else None."""
    parts = value.split("^")
    if len(parts) < 10 or parts[6] != "IDNST" or not parts[9]:
        return None
    return parts[9]


def ce(code: str, display: str, scheme: str) -> str:
    """`code^display^codingScheme` (authorSpecialty, authorRole)."""
    return f"{escape(code)}^{escape(display)}^{escape(scheme)}"


def xpn_legal(family: str, given: str | None) -> str:
    """XPN of the birth (legal) name: `FAMILY^Given^^^^^L`."""
    return f"{escape(family)}^{escape(given or '')}^^^^^L"


def dtm(value: dt.datetime) -> str:
    """UTC `YYYYMMDDHHMMSS`, as XDS requires; naive values are taken as Europe/Paris time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=LOCAL_TZ)
    return value.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S")


def date(value: dt.date) -> str:
    """`YYYYMMDD` (PID-7 birth date)."""
    return value.strftime("%Y%m%d")
