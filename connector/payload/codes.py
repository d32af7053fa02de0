"""CI-SIS value sets (IHE SVS files of the ANS kit) and the DMP's own terminology tables, loaded once per process.

J07 XdsTypeCode (document types), J02 healthcare facility types, J04 practice settings,
J01 author specialties. Lookups return the official code system and display name, so builders
never hard-code a display that could drift from the published value set.

The DMP's tables (schemas/ans-terminologies/, listed with their versions in terminologies.toml): the concept map
ASS_X16 typeCode -> classCode, JDV_J57 classCode and JDV_J59 contentTypeCode.
"""

from __future__ import annotations

import csv
import re
import tomllib
from dataclasses import dataclass
from functools import cache

from lxml import etree

from connector.resources import ans_kit, schemas_dir

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


# --- the DMP's terminology tables (schemas/ans-terminologies/) -----------------------------------------

DMP_TERMINOLOGIES = "ans-terminologies"
CLASS_MAP, CLASS_CODES, CONTENT_TYPES = "ASS_X16", "JDV_J57", "JDV_J59"


@dataclass(frozen=True)
class Terminology:
    name: str
    title: str
    version: str
    oid: str
    rows: tuple[dict[str, str], ...]


@cache
def dmp_terminology(name: str) -> Terminology:
    """One table of terminologies.toml with its rows (each a dict of the TSV's header names)."""
    folder = schemas_dir() / DMP_TERMINOLOGIES
    with open(folder / "terminologies.toml", "rb") as fh:
        entry = tomllib.load(fh)[name]
    with open(folder / entry["file"], encoding="utf-8", newline="") as fh:
        rows = tuple(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return Terminology(name, entry["title"], entry["version"], entry["oid"], rows)


@cache
def _class_codes() -> dict[str, Code]:
    return {r["code"]: Code(r["code"], r["code_system"], r["display"]) for r in dmp_terminology(CLASS_CODES).rows}


@cache
def _class_map() -> dict[str, str]:
    return {r["type_code"]: r["class_code"] for r in dmp_terminology(CLASS_MAP).rows}


def class_code(code: str | None) -> Code | None:
    """The XDS classCode `code` of JDV_J57, or None if J57 does not list it."""
    return _class_codes().get(code) if code else None


def dmp_class_code(type_code: str | None) -> Code | None:
    """The classCode ASS_X16 gives the typeCode (with its J57 code system and display), or None if unmapped."""
    mapped = _class_map().get(type_code) if type_code else None
    return class_code(mapped) if mapped else None


@cache
def _content_types() -> dict[str, tuple[Code, ...]]:
    found: dict[str, tuple[Code, ...]] = {}
    for r in dmp_terminology(CONTENT_TYPES).rows:
        found[r["code"]] = found.get(r["code"], ()) + (Code(r["code"], r["code_system"], r["display"]),)
    return found


def content_types(code: str | None) -> list[Code]:
    """Every JDV_J59 contentTypeCode spelled `code` (J59 joins four code systems: `11` is in two of them)."""
    return list(_content_types().get(code, ())) if code else []


def is_content_type(code: str | None, code_system: str | None) -> bool:
    return any(c.code_system == code_system for c in content_types(code))
