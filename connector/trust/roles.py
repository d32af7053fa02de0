"""The VIHF subject role (`urn:oasis:names:tc:xacml:2.0:subject:role`) of a professional, from the JDV_J01
specialty the store and the CDA author carry (`G15_10/SM26` = profession 10 Médecin, savoir-faire SM26).

The ANS VIHF mapping (ans-hl7v2-transmission/mapping.md) and every GIE example VIHF: the first value is the
profession (TRE_G15, JDV_J65); a second value is required for physicians, their savoir-faire (TRE_R01,
1.2.250.1.71.4.2.5: `SM26` in the GIE examples), and for pharmacists, their CNOP sub-section (TRE_G05,
1.2.250.1.71.4.2.6); the DMP refuses a physician or pharmacist without it.
"""

from __future__ import annotations

from connector.payload import codes
from connector.payload.codes import Code

PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"  # TRE_G15-ProfessionSante
SAVOIR_FAIRE_SYSTEM = "1.2.250.1.71.4.2.5"  # TRE_R01-EnsembleSavoirFaire-CISIS
CNOP_SUBSECTION_SYSTEM = "1.2.250.1.71.4.2.6"  # TRE_G05-SousSectionTableauCNOP
PHYSICIAN, PHARMACIST = "10", "21"
# The second role a profession requires, by profession code: its code system.
SECOND_ROLE_SYSTEM = {PHYSICIAN: SAVOIR_FAIRE_SYSTEM, PHARMACIST: CNOP_SUBSECTION_SYSTEM}
# TRE_G05 codes (ANS terminology, version 20231215): J01 also lists G15_21/FQ01…FQ05 ("expérience pratique"),
# which are no CNOP sub-section.
_CNOP_SUBSECTIONS = frozenset("A B C D DA DH DM E EA EB EC ED EG EH G H M".split())


class RoleError(ValueError):
    """A specialty that does not give the VIHF the role(s) the DMP requires."""


def subject_roles(specialty: str | None) -> tuple[Code, Code] | tuple[Code]:
    """The VIHF role values of a professional of JDV_J01 `specialty`: (profession,) or (profession,
    savoir-faire / CNOP sub-section) for a physician or pharmacist. RoleError says why there is none."""
    if not specialty:
        raise RoleError("no specialty (JDV_J01, e.g. G15_10/SM26)")
    known = codes.author_specialty(specialty)
    if known is None:
        raise RoleError(f"{specialty} is not a JDV_J01 specialty")
    group, _, detail = specialty.partition("/")
    if not group.startswith("G15_"):
        raise RoleError(f"{specialty} is not a health profession (TRE_G15)")
    profession_code = group.removeprefix("G15_")
    profession = codes.author_specialty(group)
    profession_role = Code(profession_code, PROFESSION_SYSTEM, profession.display if profession else "")
    second_system = SECOND_ROLE_SYSTEM.get(profession_code)
    if second_system is None:
        return (profession_role,)
    if not detail:
        raise RoleError(f"{specialty}: profession {profession_code} ({profession_role.display}) needs its "
                        f"savoir-faire or CNOP sub-section (e.g. G15_10/SM26, G15_21/H)")
    if profession_code == PHARMACIST and detail not in _CNOP_SUBSECTIONS:
        raise RoleError(f"{specialty}: {detail} is not a CNOP sub-section (TRE_G05)")
    # J01 displays a physician's savoir-faire as "Médecin - Qualifié en Médecine Générale (SM)"; the VIHF
    # value is the savoir-faire alone, as in the GIE examples.
    display = known.display.removeprefix(f"{profession_role.display} - ")
    return profession_role, Code(detail, second_system, display)
