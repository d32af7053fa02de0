"""Bad inputs: more than 50 broken store rows and files mixed into a healthy store. Each broken one gets its
reason (SKIPPED with the rule's reason, ROW_INVALID, or FAILED CDA_INVALID), nothing crashes, and every healthy
document is fed. The run is in-process with the real CDA schematron."""

import datetime as dt
import random
import sqlite3

import delivery_harness as h
from connector import config
from connector.actions import dry_run
from connector.actions import run as run_action
from connector.samples import minimal_pdf

PDF = minimal_pdf(["Document fictif", "Données de test"])
LONG = "A" * 300
BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;'
        b'&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
        b'<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol4;</title></ClinicalDocument>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>')
MAX_BYTES = 200_000

ROW_INVALID, CDA_INVALID = "ROW_INVALID", "CDA_INVALID"
OWN = object()  # this broken document gets a patient of its own (its failure must not hide a healthy sibling's)

# (case, patient overrides or None for the healthy patient, document overrides, file bytes or None, {the reason})
PATIENT_CASES = [
    ("nir-bad-key", dict(ins_matricule="BADKEY"), {"INS_INVALID"}),
    ("nir-short", dict(ins_matricule="12345"), {"INS_INVALID"}),
    ("nir-letters", dict(ins_matricule="1ABCDEFGHIJKL00"), {"INS_INVALID"}),
    ("nir-missing", dict(ins_matricule=None), {"INS_INVALID"}),
    ("oid-wrong", dict(ins_oid="1.2.3.4"), {"INS_INVALID"}),
    ("oid-missing", dict(ins_oid=None), {"INS_INVALID"}),
    ("oid-real-nir", dict(ins_oid="1.2.250.1.213.1.4.8"), {"ENVIRONMENT_MISMATCH"}),
    ("identity-prov", dict(identity_status="PROV"), {"INS_NOT_QUALIFIED"}),
    ("identity-empty", dict(identity_status=None), {"INS_NOT_QUALIFIED"}),
    ("opposed", dict(opposed_to_feeding=True), {"PATIENT_OPPOSED"}),
    ("deceased", dict(deceased_at="2026-10-02"), {"PATIENT_DECEASED"}),
    ("birth-place-missing", dict(birth_place_code=None), {"IDENTITY_INCOMPLETE"}),
    ("birth-date-missing", dict(birth_date=None), {"IDENTITY_INCOMPLETE"}),
    ("birth-name-missing", dict(birth_family_name=None), {"IDENTITY_INCOMPLETE"}),
    ("sex-unknown-letter", dict(sex="X"), {"IDENTITY_INCOMPLETE"}),
    ("opposed-not-boolean", dict(opposed_to_feeding="peut-être"), {ROW_INVALID}),  # not read as opposed: a wrong type
    ("name-not-utf8", dict(birth_family_name=b"M\xfcLLER\xff"), {ROW_INVALID}),
    ("given-not-utf8", dict(birth_given_names=b"\xc3\x28JEAN"), {ROW_INVALID}),
    ("name-300-chars", dict(birth_family_name=LONG, used_family_name=LONG), {"VALUE_TOO_LONG"}),
    ("given-300-chars", dict(birth_given_names=LONG), {"VALUE_TOO_LONG"}),
]

DOCUMENT_CASES = [
    ("patient-unknown", dict(patient_id="NO-SUCH-PATIENT"), PDF, {"PATIENT_UNKNOWN"}),
    ("file-missing", dict(content_path="documents/nothing-here.pdf"), None, {"CONTENT_MISSING"}),
    ("file-is-directory", dict(content_path="documents"), None, {"CONTENT_INVALID"}),  # not a regular file
    ("no-content-no-path", dict(content_path=None), None, {"CONTENT_MISSING"}),
    ("file-empty", {}, b"", {"CONTENT_INVALID"}),
    ("file-not-pdf", {}, b"Compte rendu\nexport texte\n", {"CONTENT_INVALID"}),
    ("file-truncated-pdf", {}, PDF[: len(PDF) // 2], {"CONTENT_INVALID"}),
    ("file-oversized", {}, PDF[:-6] + b" " * MAX_BYTES + b"%%EOF\n", {"CONTENT_INVALID"}),
    ("mime-png", dict(mime_type="image/png"), PDF, {"CONTENT_INVALID"}),
    ("mime-empty", dict(mime_type=None), PDF, {"CONTENT_INVALID"}),
    ("finess-unknown", dict(finess_geo="0B0999996"), PDF, {"SITE_UNKNOWN"}),
    ("finess-empty", dict(finess_geo=None), PDF, {"SITE_UNKNOWN"}),
    ("finess-garbage", dict(finess_geo="ZZZ"), PDF, {"SITE_UNKNOWN"}),
    ("type-unknown", dict(type_code="00000-0"), PDF, {"TYPE_NOT_ALLOWED"}),
    ("type-empty", dict(type_code=None), PDF, {"TYPE_NOT_ALLOWED"}),
    ("status-draft", dict(status="DRAFT"), PDF, {"DOCUMENT_NOT_VALIDATED"}),
    ("status-empty", dict(status=None), PDF, {"DOCUMENT_NOT_VALIDATED"}),
    ("rpps-missing", dict(author_rpps=None), PDF, {"METADATA_MISSING"}),
    ("rpps-malformed", dict(author_rpps="12AB"), PDF, {"METADATA_MISSING"}),
    ("created-missing", dict(created_at=None), PDF, {"METADATA_MISSING"}),
    ("service-start-missing", dict(service_start=None), PDF, {"METADATA_MISSING"}),
    ("mask-not-boolean", dict(mask_professionals="oui", patient_id=OWN), PDF, {ROW_INVALID}),  # not read as masked: a wrong type
    ("title-not-utf8", dict(title=b"Compte rendu \xe9t\xe9"), PDF, {ROW_INVALID}),
    ("version-not-integer", dict(version="deux"), PDF, {ROW_INVALID}),
    ("stop-before-start", dict(service_start="2026-11-10 10:00:00", service_stop="2026-11-01 10:00:00"), PDF,
     {"METADATA_INVALID"}),
    ("title-300-chars", dict(title=LONG, patient_id=OWN), PDF, {"VALUE_TOO_LONG"}),
    ("author-300-chars", dict(author_family_name=LONG, patient_id=OWN), PDF, {"VALUE_TOO_LONG"}),
    ("xml-bomb", dict(mime_type="text/xml"), BOMB, {CDA_INVALID}),
    ("xml-external-entity", dict(mime_type="text/xml"), XXE, {CDA_INVALID}),
    ("xml-not-xml", dict(mime_type="text/xml"), b"hello, not xml", {"CONTENT_INVALID"}),
    ("xml-not-cda", dict(mime_type="text/xml"), b"<foo>bar</foo>", {CDA_INVALID}),
    ("xml-truncated", dict(mime_type="text/xml"), b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>', {CDA_INVALID}),
    ("xml-empty-cda", dict(mime_type="text/xml"), b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>', {CDA_INVALID}),
]

# Text in a DATE / DATETIME column of a SQLite store (SQLite does not check types).
DATE_PATIENT_CASES = [
    ("birth-date-text", dict(birth_date="pas une date"), {ROW_INVALID}),
    ("birth-date-impossible", dict(birth_date="1980-13-45"), {ROW_INVALID}),
    ("deceased-text", dict(deceased_at="hier"), {ROW_INVALID}),
]
DATE_DOCUMENT_CASES = [
    ("created-text", dict(created_at="hier soir"), PDF, {ROW_INVALID}),
    ("service-stop-impossible", dict(service_stop="2026-02-30 10:00:00"), PDF, {ROW_INVALID}),
]


def _insert(db, table: str, row: dict) -> None:
    db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
               [str(v) if isinstance(v, dt.date) else v for v in row.values()])  # as SQLAlchemy stores them


def _broken_store(directory, patient_cases=PATIENT_CASES, document_cases=DOCUMENT_CASES) -> tuple[set, dict]:
    healthy = set(h.synthetic_store(directory, 10, seed=21))
    expected = {}
    with sqlite3.connect(directory / "store.sqlite3") as db:
        good_pid = db.execute("SELECT patient_id FROM dmp_patient ORDER BY patient_id LIMIT 1").fetchone()[0]
        for i, (case, overrides, allowed) in enumerate(patient_cases):
            pid, did = f"BADP-{i:02d}", f"BAD-{case}"
            _insert(db, "dmp_patient", h.patient_row(pid, h.valid_nir(random.Random(i)), **overrides))
            (directory / "documents" / f"{did}.pdf").write_bytes(PDF)
            _insert(db, "dmp_document", h.document_row(did, pid, content_path=f"documents/{did}.pdf"))
            expected[did] = allowed
        for case, overrides, content, allowed in document_cases:
            did = f"BAD-{case}"
            row = h.document_row(did, good_pid, content_path=f"documents/{did}.bin")
            row.update(overrides)
            if row["patient_id"] is OWN:
                row["patient_id"] = f"BADD-{case}"
                _insert(db, "dmp_patient", h.patient_row(row["patient_id"], h.valid_nir(random.Random(case))))
            if content is not None:
                (directory / "documents" / f"{did}.bin").write_bytes(content)
            _insert(db, "dmp_document", row)
            expected[did] = allowed
    return healthy, expected


def test_broken_rows_and_files_get_their_reason_and_healthy_documents_are_fed(tmp_path):
    healthy, expected = _broken_store(tmp_path / "store")
    assert len(expected) >= 50
    _run_and_check(tmp_path, healthy, expected)


def test_malformed_dates_in_a_sqlite_store_are_row_invalid_not_a_crash(tmp_path):
    """Text in a SQLite DATE column makes that row ROW_INVALID (the store reads dates raw and parses them
    per row), never an aborted scan."""
    healthy, expected = _broken_store(tmp_path / "store", DATE_PATIENT_CASES, DATE_DOCUMENT_CASES)
    _run_and_check(tmp_path, healthy, expected)


def test_an_over_long_author_name_does_not_fail_the_healthy_documents_sent_with_it(tmp_path):
    """A 300-character author name would make an XDS slot value exceed 256 characters and fail the whole
    submission set; the rules skip that document alone (VALUE_TOO_LONG) and its siblings are fed."""
    cases = [("author-300-chars-sibling", dict(author_family_name=LONG), PDF, {"VALUE_TOO_LONG"})]
    healthy, expected = _broken_store(tmp_path / "store", [], cases)
    _run_and_check(tmp_path, healthy, expected)


def _run_and_check(tmp_path, healthy: set, expected: dict) -> None:
    assert all(len(reasons) == 1 for reasons in expected.values()), "one outcome per case: the README's"
    folder = h.make_folder(tmp_path)
    with h.sandbox(folder, fast=False) as sb:  # the sandbox checks the CDAs with the schematron as well
        settings = config.load(folder.configure(sb.url, rules={"max_document_bytes": MAX_BYTES}))
        planned = {d.document_id: d.reason for d in dry_run.decisions(settings)}
        summary = run_action.run(settings)
        again = run_action.run(settings)  # a second pass changes nothing and does not crash either

    states = h.ledger_states(folder.ledger_url)
    outcome = {}
    for did in expected:
        recorded = [s for (d, _), s in states.items() if d == did]
        if recorded:
            state, reason = recorded[0]
            outcome[did] = None if state == "FED" else reason
        else:  # a row without a usable version cannot be recorded in the ledger: the scan reports it
            outcome[did] = planned[did]
    wrong = {did: (outcome[did], expected[did]) for did in expected if outcome[did] not in expected[did]}
    assert not wrong, wrong
    assert summary.counts.get("error", 0) == 0 and again.counts.get("fed", 0) == 0

    fed_broken = {(d, 1) for d, reason in outcome.items() if reason is None}
    h.assert_exactly_once(folder, healthy | fed_broken)
    assert h.received(folder)["rejected"] == 0  # nothing invalid reached the DMP
