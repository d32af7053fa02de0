import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_settings

from connector import ins, rules, samples
from connector.store import Candidate, Store, dmp_document, dmp_patient


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("samples")
    samples.create_sample_store(directory)
    return directory


def _rows(db: Path) -> dict:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return {t.name: conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all()
                    for t in (dmp_patient, dmp_document)}
    finally:
        engine.dispose()


def test_building_twice_gives_the_same_rows_and_files(tmp_path):
    first = tmp_path / "a"
    samples.create_sample_store(first)
    rows = _rows(first / "store.sqlite3")
    files = {p.name: p.read_bytes() for p in (first / "documents").iterdir()}
    (first / "documents" / "DOC-018-v1.pdf").write_bytes(b"stale")  # must be removed again
    samples.create_sample_store(first)
    assert _rows(first / "store.sqlite3") == rows
    assert {p.name: p.read_bytes() for p in (first / "documents").iterdir()} == files
    samples.create_sample_store(tmp_path / "b")
    assert _rows(tmp_path / "b" / "store.sqlite3") == rows
    assert len(rows["dmp_document"]) == len(samples.expected_decisions())


def test_every_pdf_is_well_formed_and_distinct(sample_dir):
    pdfs = [p.read_bytes() for p in sorted((sample_dir / "documents").glob("*.pdf"))]
    valid = [pdf for pdf in pdfs if pdf.startswith(b"%PDF-")]
    assert len(valid) == len(pdfs) - 2  # the empty file and the plain-text "PDF" cases
    assert len(set(valid)) == len(valid)
    for pdf in valid:
        _assert_pdf_structure(pdf)


def _assert_pdf_structure(pdf: bytes) -> None:
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    startxref = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", pdf).group(1))
    assert pdf[startxref:].startswith(b"xref\n0 ")
    header = re.match(rb"xref\n0 (\d+)\n", pdf[startxref:])
    count = int(header.group(1))
    table = pdf[startxref + header.end():]
    entries = [table[i * 20:(i + 1) * 20] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    for number, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry)
        assert pdf[int(entry[:10]):].startswith(b"%d 0 obj\n" % number)
    assert table[count * 20:].startswith(b"trailer\n<< /Size %d /Root 1 0 R " % count)
    for found in re.finditer(rb"/Length (\d+) >>\nstream\n", pdf):  # every stream (content, XMP, glyphs)
        assert pdf[found.end() + int(found.group(1)):].startswith(b"\nendstream")


def test_pdf_text_escapes_parentheses():
    for pdfa in (True, False):
        pdf = samples.minimal_pdf(["a (b) \\ c"], pdfa=pdfa)
        assert b"(a \\(b\\) \\\\ c) Tj" in pdf
        _assert_pdf_structure(pdf)


def test_sample_pdfs_pass_the_pdfa_triage():
    from connector import pdfa

    assert pdfa.problems(samples.minimal_pdf(["Compte rendu d'échographie", "DOC-025 version 1"])) == []


def test_identities_are_fictitious_and_keys_verify_except_the_bad_one():
    for p in samples.PATIENTS:
        reason = ins.check_ins(p.ins_matricule, p.ins_oid)
        if p.patient_id == "IPP-007":
            assert reason == "INS matricule key does not verify"
        else:
            assert reason is None, p.patient_id
    oids = {p.ins_oid for p in samples.PATIENTS}
    assert ins.INS_NIR_TEST in oids
    corsica = {p.ins_matricule[5:7] for p in samples.PATIENTS}
    assert {"2A", "2B"} <= corsica


def test_samples_cover_every_record_and_content_reason():
    expected = set(samples.expected_decisions().values())
    # what the DMP already holds gives the others (a ledger's: tests/test_corrections_*.py)
    in_the_dmp = {rules.Reason.ALREADY_FED, rules.Reason.WITHDRAWN, rules.Reason.REPLACED}
    assert expected == (set(rules.Reason) - in_the_dmp) | {None}


def test_rules_over_the_sample_store_give_the_expected_decisions(sample_dir, tmp_path):
    settings = make_settings(tmp_path)
    store = Store(f"sqlite:///{sample_dir / 'store.sqlite3'}", sample_dir)
    store.check_schema()
    decided = {}
    for candidate in store.candidates():
        assert isinstance(candidate, Candidate), candidate
        doc = candidate.document
        skip = rules.check_record(doc, candidate.patient, settings, already_fed=False)
        if skip is None:
            try:
                content, error = store.content(doc), None
            except OSError as exc:
                content, error = None, exc.strerror
            skip = rules.check_content(doc, content, settings, error=error)
        decided[doc.key] = skip.reason if skip else None
    assert decided == samples.expected_decisions()


def test_minor_documents_carry_masking_flags(sample_dir):
    store = Store(f"sqlite:///{sample_dir / 'store.sqlite3'}", sample_dir)
    minor = {c.document.document_id: c.document for c in store.candidates() if c.document.patient_id == "IPP-010"}
    assert minor["DOC-014"].invisible_to_legal_representatives and not minor["DOC-014"].mask_professionals
    assert minor["DOC-015"].mask_professionals and minor["DOC-015"].invisible_to_patient
    assert samples.expected_decisions()[("DOC-014", 1)] is None


def test_inline_content_is_read_from_the_content_column(sample_dir):
    store = Store(f"sqlite:///{sample_dir / 'store.sqlite3'}", sample_dir)
    doc = next(c.document for c in store.candidates() if c.document.document_id == "DOC-004")
    assert doc.content_path is None
    assert store.content(doc).startswith(b"%PDF-1.4")


def test_readme_lists_the_expected_decisions():
    readme = (Path(__file__).parent.parent / "samples" / "README.md").read_text(encoding="utf-8")
    listed = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("DOC-"):
            code = re.match(r"`(\w+)`", cells[-1])
            listed[(cells[0], int(cells[1]))] = code.group(1) if code else None
    assert listed == samples.expected_decisions()


def test_write_back_table_created_by_another_instance_meanwhile(tmp_path, monkeypatch):
    """Two instances starting on a new store both see no dmp_feed_status table; the one that creates it second
    must not fail (seen in the multi-instance test once start-up got faster)."""
    import connector.store as store_module

    db = samples.create_sample_store(tmp_path)
    store = Store(f"sqlite:///{db}", tmp_path)
    table = store_module.dmp_feed_status
    create = type(table).create

    def lose_the_race(self, bind, checkfirst=False):
        create(self, bind, checkfirst=True)  # the other instance, between our check and our CREATE
        create(self, bind, checkfirst=False)  # ours: "table dmp_feed_status already exists"

    monkeypatch.setattr(type(table), "create", lose_the_race)
    store.ensure_write_back_table()
    assert sa.inspect(store.engine).has_table("dmp_feed_status")


def test_the_activity_column_is_optional(tmp_path):
    """A store whose dmp_document predates `activity` still reads: its documents take the default activity."""
    db = samples.create_sample_store(tmp_path)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT activity FROM dmp_document WHERE document_id = 'DOC-001'")).scalar() == "I"
        conn.execute(sa.text("ALTER TABLE dmp_document DROP COLUMN activity"))
    engine.dispose()
    for check_first in (True, False):  # candidates() and get() find out for themselves too
        store = Store(f"sqlite:///{db}", tmp_path)
        if check_first:
            store.check_schema()
        assert store.get("DOC-001", 1).document.activity is None
        assert {c.document.activity for c in store.candidates() if isinstance(c, Candidate)} == {None}
