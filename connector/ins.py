"""INS (Identifiant National de Santé) checks: NIR/NIA structure, control key, OID.

A matricule is 15 characters: 13 for the NIR itself (sex 1, year 2, month 2, département 2, commune 3,
order 3) and a 2-digit key = 97 - (N mod 97), where Corsica's département `2A`/`2B` counts as 19/18.
Source: dmp-spec-notes §5, verified on the ANS and INSi test fixtures (see tests/test_ins.py).

Every reason text returned here names what is wrong, never the value: it may reach logs and reports.
"""

from __future__ import annotations

INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"  # NIA: same structure and key algorithm assumed ([UNKNOWN] in the notes)
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"  # démonstration NIR (not a test NIA)

INS_OIDS = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO})
TEST_OIDS = frozenset({INS_NIR_TEST, INS_NIR_DEMO})  # fictitious identities: test platforms only
REAL_OIDS = INS_OIDS - TEST_OIDS

# First digit: 1/2 (man/woman) for a NIR; 3/4 and 7/8 are the same for the numbers given to people
# born abroad pending their registration (NIA / provisional numbers). We accept them all and let the
# INS status (only QUAL is fed) be the real gate.
SEX_DIGITS = frozenset("123478")
_CORSICA = {"2A": "19", "2B": "18"}
_DEPARTMENT = slice(5, 7)  # characters 6-7, the only place where a letter may appear


def nir_key(nir13: str) -> int:
    """The control key (1..97) of a 13-character NIR; raises ValueError if it is not one."""
    if len(nir13) != 13:
        raise ValueError(f"a NIR without key has 13 characters, got {len(nir13)}")
    department = nir13[_DEPARTMENT]
    digits = nir13[:5] + _CORSICA.get(department, department) + nir13[7:]
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError("a NIR has only digits, except 2A/2B as département")
    return 97 - int(digits) % 97


def check_ins(matricule: str | None, oid: str | None) -> str | None:
    """None when the INS is well formed and its key verifies, else a short reason (no patient data)."""
    if not matricule:
        return "INS matricule is missing"
    if not oid:
        return "INS OID is missing"
    if oid not in INS_OIDS:
        return f"INS OID {oid} is not an INS OID (NIR, NIA, test or demo NIR)"
    if len(matricule) != 15:
        return f"INS matricule has {len(matricule)} characters, expected 15"
    try:
        key = nir_key(matricule[:13])
        if not (matricule[13:].isascii() and matricule[13:].isdigit()):
            raise ValueError("key")
    except ValueError:
        return "INS matricule has characters other than digits (only 2A/2B allowed, as département)"
    if matricule[0] not in SEX_DIGITS:
        return "INS matricule first character must be 1, 2, 3, 4, 7 or 8"
    if int(matricule[13:]) != key:
        return "INS matricule key does not verify"
    return None


def ins_cx(matricule: str, oid: str) -> str:
    """The INS as an HL7 v2 CX value (XDS patientId / sourcePatientId): `<m>^^^&<oid>&ISO^NH`."""
    return f"{matricule}^^^&{oid}&ISO^NH"
