import datetime as dt

import pytest
from conftest import make_document, make_patient, make_settings

from connector import ins, rules
from connector.rules import Reason, Skip, check_content, check_record
from connector.samples import minimal_pdf

PDF = minimal_pdf(["Document fictif"])


def decide(settings, document=None, patient="default", **kw):
    document = document or make_document()
    patient = make_patient() if patient == "default" else patient
    kw.setdefault("already_fed", False)
    return check_record(document, patient, settings, **kw)


def test_a_complete_qualified_record_is_eligible(settings):
    assert decide(settings) is None


def test_demo_oid_is_eligible_on_test(settings):
    assert decide(settings, patient=make_patient(ins_oid=ins.INS_NIR_DEMO)) is None


RECORD_CASES = [
    ({}, {}, {"already_fed": True}, Reason.ALREADY_FED, "already"),
    ({"ins_matricule": None}, {}, {}, Reason.INS_INVALID, "missing"),
    ({"ins_matricule": "279035121518988"}, {}, {}, Reason.INS_INVALID, "key"),
    ({"ins_oid": "1.2.250.1.213.1.4.2"}, {}, {}, Reason.INS_INVALID, "OID"),
    ({"ins_oid": ins.INS_NIR}, {}, {}, Reason.ENVIRONMENT_MISMATCH, "dmp.environment"),
    ({"ins_oid": ins.INS_NIA}, {}, {}, Reason.ENVIRONMENT_MISMATCH, "dmp.environment"),
    ({"identity_status": "PROV"}, {}, {}, Reason.INS_NOT_QUALIFIED, "PROV"),
    ({"identity_status": "RECUP"}, {}, {}, Reason.INS_NOT_QUALIFIED, "RECUP"),
    ({"identity_status": "VALI"}, {}, {}, Reason.INS_NOT_QUALIFIED, "VALI"),
    ({"identity_status": None}, {}, {}, Reason.INS_NOT_QUALIFIED, "identity_status"),
    ({"opposed_to_feeding": True}, {}, {}, Reason.PATIENT_OPPOSED, "opposed_to_feeding"),
    ({"deceased_at": dt.date(2026, 11, 1)}, {}, {}, Reason.PATIENT_DECEASED, "deceased_at"),
    ({}, {"status": "DRAFT"}, {}, Reason.DOCUMENT_NOT_VALIDATED, "DRAFT"),
    ({}, {"status": "CANCELLED"}, {}, Reason.DOCUMENT_NOT_VALIDATED, "CANCELLED"),
    ({}, {"status": None}, {}, Reason.DOCUMENT_NOT_VALIDATED, "empty"),
    ({}, {"status": "NOT_FOR_DMP"}, {}, Reason.NOT_FOR_DMP, "DESTDMP"),  # the sender said so (HL7 intake)
    # not destined to the DMP: said as such, not as an identity problem nobody needs to fix
    ({"identity_status": "VALI"}, {"status": "NOT_FOR_DMP"}, {}, Reason.NOT_FOR_DMP, "not destined"),
    ({}, {"finess_geo": "0B0999996"}, {}, Reason.SITE_UNKNOWN, "0B0999996"),
    ({}, {"finess_geo": None}, {}, Reason.SITE_UNKNOWN, "finess_geo"),
    ({}, {"type_code": "11526-1"}, {}, Reason.TYPE_NOT_ALLOWED, "JDV_J07"),
    ({}, {"type_code": None}, {}, Reason.TYPE_NOT_ALLOWED, "type_code"),
    # in JDV_J07 but not in the DMP's typeCode -> classCode map: the DMP has no classCode for it
    ({}, {"type_code": "51851-4"}, {}, Reason.TYPE_NOT_ALLOWED, "ASS_X16"),
    ({}, {"activity": "X"}, {}, Reason.ACTIVITY_INVALID, "dmp_document.activity 'X' is neither"),
    ({}, {"activity": "SA01"}, {}, Reason.ACTIVITY_INVALID, "JDV_J59"),  # SA01 is in R02, not in J59
    ({}, {"activity": "11"}, {}, Reason.ACTIVITY_INVALID, "11^1.2.250.1.213.2.2"),  # two J59 code systems
    ({}, {"activity": "04^1.2.250.1.71.4.2.4"}, {}, Reason.ACTIVITY_INVALID, "JDV_J59"),  # the wrong code system
    ({"birth_place_code": None}, {}, {}, Reason.IDENTITY_INCOMPLETE, "birth_place_code"),
    ({"birth_date": None}, {}, {}, Reason.IDENTITY_INCOMPLETE, "birth_date"),
    ({"birth_given_names": None}, {}, {}, Reason.IDENTITY_INCOMPLETE, "birth_given_names"),
    ({"sex": "X"}, {}, {}, Reason.IDENTITY_INCOMPLETE, "sex"),
    ({}, {"author_rpps": None}, {}, Reason.METADATA_MISSING, "author_rpps"),
    ({}, {"author_rpps": "8100012345"}, {}, Reason.METADATA_MISSING, "author_rpps"),
    ({}, {"service_start": None}, {}, Reason.METADATA_MISSING, "service_start"),
    ({}, {"created_at": None}, {}, Reason.METADATA_MISSING, "created_at"),
    ({}, {"author_family_name": "D'" + "É" * 200}, {}, Reason.VALUE_TOO_LONG, "author_family_name"),
    ({"birth_given_names": "Zoé " * 60}, {}, {}, Reason.VALUE_TOO_LONG, "birth_given_names"),
    ({}, {"title": "T" * 256}, {}, Reason.VALUE_TOO_LONG, "title"),
    # issue 15: these failed the patient's whole submission set METADATA_INVALID, or were sent wrong
    ({}, {"author_family_name": "^" * 60, "author_given_name": "&" * 60}, {}, Reason.VALUE_TOO_LONG,
     "author_family_name"),  # 120 characters, 360 once HL7-escaped
    ({"patient_id": "P" * 64 + "|" * 60}, {}, {}, Reason.VALUE_TOO_LONG, "patient_id"),
    ({}, {"legal_authenticator_rpps": "ABC"}, {}, Reason.METADATA_MISSING, "legal_authenticator_rpps"),  # sent as 8ABC
    ({}, {"author_family_name": None}, {}, Reason.METADATA_MISSING, "author_family_name"),  # was CDA_INVALID
]


@pytest.mark.parametrize("patient_changes, document_changes, kw, reason, field", RECORD_CASES)
def test_reasons(patient_changes, document_changes, kw, reason, field, settings):
    patient = make_patient(**patient_changes)
    skip = decide(settings, make_document(**document_changes), patient, **kw)
    assert isinstance(skip, Skip)
    assert skip.reason == reason
    assert field in skip.detail
    for private in (patient.ins_matricule, patient.birth_family_name, patient.used_given_name, "1979"):
        assert not private or private not in skip.detail


def test_missing_patient_row(settings):
    skip = decide(settings, patient=None)
    assert skip.reason == Reason.PATIENT_UNKNOWN


def test_test_oid_in_production_is_a_mismatch(tmp_path):
    prod = make_settings(tmp_path, dmp={"environment": "production"})
    assert decide(prod).reason == Reason.ENVIRONMENT_MISMATCH
    demo = make_patient(ins_oid=ins.INS_NIR_DEMO)
    assert decide(prod, patient=demo).reason == Reason.ENVIRONMENT_MISMATCH
    assert decide(prod, patient=make_patient(ins_oid=ins.INS_NIR)) is None


def test_allowed_type_codes_restrict_j07(tmp_path):
    only_letters = make_settings(tmp_path, rules={"allowed_type_codes": ["11490-0"]})
    assert decide(only_letters) is None
    skip = decide(only_letters, make_document(type_code="11488-4"))
    assert skip.reason == Reason.TYPE_NOT_ALLOWED and "rules.allowed_type_codes" in skip.detail


def test_order_already_fed_wins_over_everything(settings):
    patient = make_patient(opposed_to_feeding=True, deceased_at=dt.date(2026, 1, 1), identity_status="PROV")
    assert decide(settings, make_document(status="DRAFT"), patient, already_fed=True).reason == Reason.ALREADY_FED


def test_order_exclusions_before_incomplete_data(settings):
    patient = make_patient(opposed_to_feeding=True, birth_place_code=None)
    assert decide(settings, make_document(author_rpps=None), patient).reason == Reason.PATIENT_OPPOSED


def test_order_invalid_ins_before_not_qualified(settings):
    patient = make_patient(ins_matricule="279035121518988", identity_status="PROV")
    assert decide(settings, patient=patient).reason == Reason.INS_INVALID


def test_reason_codes_are_plain_strings():
    assert Reason.PATIENT_OPPOSED == "PATIENT_OPPOSED"
    assert {r.value for r in Reason} == {r.name for r in Reason}


def test_j07_value_set_is_read():
    assert rules.is_type_code("11490-0") and rules.is_type_code("18748-4") and rules.is_type_code("34794-8")
    assert not rules.is_type_code("11526-1") and not rules.is_type_code("")


# --- content ---------------------------------------------------------------------------------


def content_reason(settings, content, error=None, **document_changes):
    skip = check_content(make_document(**document_changes), content, settings, error=error)
    return skip and skip.reason


def test_valid_pdf_and_xml_are_accepted(settings):
    assert content_reason(settings, PDF) is None
    xml = b"\xef\xbb\xbf  <?xml version='1.0'?><ClinicalDocument/>"
    assert content_reason(settings, xml, mime_type="text/xml") is None


def test_a_mime_type_with_parameters_is_refused_at_once(settings):
    """The XDS mimeType takes the bare type: `application/pdf; charset=binary` used to pass the rules (and
    `--dry-run`), then fail the whole submission set METADATA_INVALID."""
    skip = check_content(make_document(mime_type="application/pdf; charset=binary"), PDF, settings)
    assert skip.reason == Reason.CONTENT_INVALID and "parameters" in skip.detail


@pytest.mark.parametrize("content", [
    b"%PDF-1.7\n<html><body>not a pdf</body></html>\n%%EOF\n",  # a web page behind a PDF header
    b"%PDF-1.4\nPK\x03\x04" + bytes(range(256)) * 4 + b"\nstartxref\n9\n%%EOF\n",  # a zip framed by %PDF-
    minimal_pdf(["x"]).replace(b"startxref\n", b"startxref\n1"),  # startxref pointing at no xref
])
def test_a_body_that_is_not_a_pdf_is_refused(settings, content):
    skip = check_content(make_document(), content, settings)
    assert skip is not None and skip.reason == Reason.CONTENT_INVALID and "cross-reference" in skip.detail


def test_unreadable_content_is_missing(settings):
    skip = check_content(make_document(), None, settings, error="FileNotFoundError")
    assert skip == Skip(Reason.CONTENT_MISSING, "content unreadable: FileNotFoundError")
    assert content_reason(settings, None) == Reason.CONTENT_MISSING


@pytest.mark.parametrize(
    "content, changes",
    [
        (b"", {}),
        (b"Compte rendu en texte", {}),
        (PDF[:-7], {}),  # truncated: no %%EOF
        (b"%PDF-1.4 but this is not XML", {"mime_type": "text/xml"}),
        (PDF, {"mime_type": "image/jpeg"}),
        (PDF, {"mime_type": None}),
    ],
)
def test_invalid_content(content, changes, settings):
    assert content_reason(settings, content, **changes) == Reason.CONTENT_INVALID


def test_content_over_the_size_limit(tmp_path):
    small = make_settings(tmp_path, rules={"max_document_bytes": len(PDF)})
    assert content_reason(small, PDF) is None
    skip = check_content(make_document(), PDF + b"\n", small)
    assert skip.reason == Reason.CONTENT_INVALID and "rules.max_document_bytes" in skip.detail


def test_every_reason_has_a_test():
    # A new Reason must get a case: RECORD_CASES, or one of the named tests for the three others; the
    # corrections of documents already in the DMP are the scan's (tests/test_corrections_scan.py).
    named = {Reason.PATIENT_UNKNOWN, Reason.CONTENT_MISSING, Reason.CONTENT_INVALID, Reason.WITHDRAWN,
             Reason.REPLACED}
    assert {case[3] for case in RECORD_CASES} | named == set(Reason)


@pytest.mark.parametrize("activity", ["I", "O", "R", "N", "04", "SA07", "EXP_PATIENT", "11^1.2.250.1.213.1.6.1.128", None])
def test_an_encounter_class_or_a_j59_code_is_a_valid_activity(settings, activity):
    assert decide(settings, make_document(activity=activity)) is None


def test_a_type_outside_ass_x16_is_fed_with_the_configured_fallback_class(tmp_path):
    fallback = make_settings(tmp_path, submission={"class_code_fallback": "95"})
    assert decide(fallback, make_document(type_code="51851-4")) is None
