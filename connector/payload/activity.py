"""The activity behind a document, sent as its submission set's contentTypeCode (JDV_J59).

The store says it per document (`dmp_document.activity`), else `submission.default_activity` does, in one of
two spellings:
- the encounter class (HL7 v2 PV1-2) `I`, `O`, `R` or `N`, which the ANS maps to TRE_R209 type d'activité
  `03` (hospitalisation complète), `07` (consultations soins externes), `19` (traitement et cure ambulatoire)
  and `97` (type d'activité indifférencié);
- a JDV_J59 code (`04`, `SA01`, `EXP_PATIENT`…). J59 joins four code systems and `11` is in two of them
  (TRE_R276 centre postcure, TRE_R209 hébergement complet): such a code is written `CODE^CODE_SYSTEM`
  (`11^1.2.250.1.213.2.2`), which is accepted for any code.
A submission set holds the documents of one activity (prepare groups them so).
"""

from __future__ import annotations

from connector.payload import codes

R209 = "1.2.250.1.213.2.2"  # TRE_R209-TypeActivite
ENCOUNTER_CLASSES = {"I": "03", "O": "07", "R": "19", "N": "97"}
_SHOWN = 40  # a store value quoted in a message is cut there


class ActivityError(ValueError):
    """The activity is neither an encounter class nor a JDV_J59 code; the message says why (no store data but it)."""


def content_type(activity: str) -> codes.Code:
    """The JDV_J59 contentTypeCode of an activity (see the module's docstring); raises ActivityError."""
    value = activity.strip()
    if value in ENCOUNTER_CLASSES:
        value = f"{ENCOUNTER_CLASSES[value]}^{R209}"
    code, qualified, code_system = value.partition("^")
    found = [c for c in codes.content_types(code) if not qualified or c.code_system == code_system]
    shown = repr(activity[:_SHOWN])
    if not found:
        raise ActivityError(f"{shown} is neither an encounter class (I, O, R, N) nor a JDV_J59 code")
    if len(found) > 1:
        systems = ", ".join(f"{code}^{c.code_system} {c.display}" for c in found)
        raise ActivityError(f"{shown} is a JDV_J59 code of several code systems: write one of {systems}")
    return found[0]
