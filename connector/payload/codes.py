"""CI-SIS value sets (IHE SVS files of the ANS kit), loaded once per process.

J07 XdsTypeCode (document types), J02 healthcare facility types, J04 practice settings,
J01 author specialties. Lookups return the official code system and display name, so builders
never hard-code a display that could drift from the published value set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from lxml import etree

from connector.resources import ans_kit

_SVS = "{urn:ihe:iti:svs:2008}"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

TYPE_CODES = "JDV_J07_XdsTypeCode_CISIS.xml"
FACILITY_TYPES = "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS.xml"
PRACTICE_SETTINGS = "JDV_J04_XdsPracticeSettingCode_CISIS.xml"
AUTHOR_SPECIALTIES = "JDV_J01_XdsAuthorSpecialty_CISIS.xml"


@dataclass(frozen=True)
class Code:
    code: str
    code_system: str
    display: str


@cache
def value_set(filename: str) -> dict[str, Code]:
    """code -> Code of one SVS value set of the kit's `jeuxDeValeurs/` (first occurrence wins)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    tree = etree.parse(str(ans_kit() / "jeuxDeValeurs" / filename), parser)
    concepts: dict[str, Code] = {}
    for c in tree.iter(f"{_SVS}Concept"):
        concepts.setdefault(c.get("code"), Code(c.get("code"), c.get("codeSystem"), c.get("displayName") or ""))
    return concepts


def type_code(code: str | None) -> Code | None:
    """The XDS typeCode (= CDA ClinicalDocument/code) of JDV_J07, or None if unknown."""
    return value_set(TYPE_CODES).get(code) if code else None


def is_type_code(code: str | None) -> bool:
    """True if `code` is a JDV_J07 typeCode a document (CDA ClinicalDocument/code) may carry:
    J07 also lists E1762 (ASTM, the submission-set signature's type), whose code system is no OID."""
    found = type_code(code)
    return found is not None and _OID.match(found.code_system) is not None


def facility_type(code: str | None) -> Code | None:
    """healthcareFacilityTypeCode (JDV_J02, e.g. SA01)."""
    return value_set(FACILITY_TYPES).get(code) if code else None


def practice_setting(code: str | None) -> Code | None:
    """practiceSettingCode (JDV_J04, e.g. ETABLISSEMENT)."""
    return value_set(PRACTICE_SETTINGS).get(code) if code else None


def author_specialty(code: str | None) -> Code | None:
    """Author profession/specialty (JDV_J01, e.g. G15_10/SM26)."""
    return value_set(AUTHOR_SPECIALTIES).get(code) if code else None
