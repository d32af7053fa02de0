"""A hostile store (a buggy or compromised DPI with write access to it): one bad row costs that row, never the
scan, never another document, never a file outside `store.content_root`. Decisions are checked both ways the
scan reads content: whole (a run) and probed (`run --dry-run`)."""

import os
import sqlite3

import pytest
from conftest import make_settings

import delivery_harness as h
from connector.actions.context import open_store
from connector.samples import minimal_pdf
from connector.scan import scan

PDF = minimal_pdf(["Document fictif"])


def _store(tmp_path, rows: list[dict], *, keyless: bool = False, limit: int = 200_000):
    """A store of one healthy patient ('HEALTHY-1' fed) plus `rows` (document overrides; `file` = bytes
    written to the row's own file). keyless: the tables lose their primary keys, like a DPI's view."""
    directory = tmp_path / "store"
    h.synthetic_store(directory, 1, prefix="OK")
    with sqlite3.connect(directory / "store.sqlite3") as db:
        if keyless:
            for table in ("dmp_patient", "dmp_document"):
                db.executescript(f"CREATE TABLE t AS SELECT * FROM {table}; DROP TABLE {table}; "
                                 f"ALTER TABLE t RENAME TO {table};")
        for i, overrides in enumerate(rows):
            overrides = dict(overrides)
            content = overrides.pop("file", PDF)
            did = overrides.get("document_id", f"BAD-{i:02d}")
            row = h.document_row(did if isinstance(did, str) else f"BAD-{i:02d}", "OK-P00001",
                                 content_path=f"documents/bad-{i:02d}.pdf")
            row.update(overrides)
            if content is not None:
                (directory / "documents" / f"bad-{i:02d}.pdf").write_bytes(content)
            db.execute(f"INSERT INTO dmp_document ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       [str(v) if hasattr(v, "isoformat") else v for v in row.values()])
    settings = make_settings(tmp_path, store={"url": f"sqlite:///{directory / 'store.sqlite3'}",
                                              "content_root": str(directory)},
                             rules={"max_document_bytes": limit})
    return settings, open_store(settings)


def _decisions(settings, store, load_content: bool) -> dict:
    return {(d.document_id, d.version): (d.reason, d.detail) for g in scan(store, None, settings, load_content=load_content)
            for d in g}


def _both(settings, store) -> dict:
    """The decisions, the same whether the content is read whole or probed."""
    whole, probed = _decisions(settings, store, True), _decisions(settings, store, False)
    assert whole == probed
    assert whole[("OK-D00001", 1)] == (None, None)  # the healthy document next to them is untouched
    return whole


# --- 1. content_path outside the content root --------------------------------------------------------


def test_a_content_path_outside_the_content_root_is_never_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(PDF)  # a perfectly valid PDF: only where it is matters
    (tmp_path / "store" / "documents").mkdir(parents=True)
    os.symlink(outside / "secret.pdf", tmp_path / "store" / "documents" / "link-out.pdf")
    os.symlink(outside, tmp_path / "store" / "documents" / "dir-out")
    (tmp_path / "store" / "documents" / "inside.pdf").write_bytes(PDF)
    os.symlink("inside.pdf", tmp_path / "store" / "documents" / "link-in.pdf")
    settings, store = _store(tmp_path, [
        dict(document_id="DOTDOT", content_path="../outside/secret.pdf", file=None),
        dict(document_id="ABSOLUTE", content_path=str(outside / "secret.pdf"), file=None),
        dict(document_id="SYMLINK", content_path="documents/link-out.pdf", file=None),
        dict(document_id="SYMLINK-DIR", content_path="documents/dir-out/secret.pdf", file=None),
        dict(document_id="DEV-ZERO", content_path="/dev/zero", file=None),
        dict(document_id="LINK-INSIDE", content_path="documents/link-in.pdf", file=None),
    ])
    got = _both(settings, store)
    for did in ("DOTDOT", "ABSOLUTE", "SYMLINK", "SYMLINK-DIR", "DEV-ZERO"):
        reason, detail = got[(did, 1)]
        assert reason == "CONTENT_INVALID" and "outside store.content_root" in detail, did
        assert "secret" not in detail and "outside/" not in detail  # the path is never shown
    assert got[("LINK-INSIDE", 1)] == (None, None)  # a symlink within the root is fine


# --- 3. not a regular file, or too large: refused before reading --------------------------------------


def test_a_fifo_or_a_huge_sparse_file_is_refused_without_reading_it(tmp_path):
    documents = tmp_path / "store" / "documents"
    documents.mkdir(parents=True)
    os.mkfifo(documents / "pipe.pdf")  # opened blocking, this hung the run
    with open(documents / "sparse.pdf", "wb") as f:  # 300 MB on paper, nothing on disk (3 GB took 3.2 GB of memory)
        f.truncate(300 * 2**20)
    (documents / "a-directory.pdf").mkdir()
    settings, store = _store(tmp_path, [
        dict(document_id="FIFO", content_path="documents/pipe.pdf", file=None),
        dict(document_id="SPARSE", content_path="documents/sparse.pdf", file=None),
        dict(document_id="DIRECTORY", content_path="documents/a-directory.pdf", file=None),
    ], limit=20 * 2**20)
    got = _both(settings, store)
    assert got[("FIFO", 1)] == ("CONTENT_INVALID", "content_path is not a regular file")
    assert got[("DIRECTORY", 1)] == ("CONTENT_INVALID", "content_path is not a regular file")
    assert got[("SPARSE", 1)] == ("CONTENT_INVALID", f"content is {300 * 2**20} bytes, over rules.max_document_bytes {20 * 2**20}")


def _growing(tmp_path, monkeypatch, growth: bytes):
    """A store document whose file grows by `growth` once opened (after fstat), read with a limit of its
    size + 10: (the store, the document, that limit)."""
    settings, store = _store(tmp_path, [dict(document_id="GROWING", file=PDF)], limit=len(PDF) + 10)
    document = next(c.document for c in store.candidates() if c.document.document_id == "GROWING")
    path = tmp_path / "store" / document.content_path
    real_open = store.open_content

    def open_then_grow(doc, limit=None):
        fd, size = real_open(doc, limit)
        with open(path, "ab") as f:
            f.write(growth)
        return fd, size

    monkeypatch.setattr(store, "open_content", open_then_grow)
    return store, document, len(PDF) + 10


def test_the_read_stops_at_the_limit_even_if_the_file_grows(tmp_path, monkeypatch):
    """fstat said small, the file grew since: at most limit + 1 bytes are read, then it is refused."""
    store, document, limit = _growing(tmp_path, monkeypatch, b"\0" * 10_000)
    from connector.store import ContentRefused

    with pytest.raises(ContentRefused, match="over rules.max_document_bytes"):
        store.content(document, limit)


def test_a_file_grown_within_the_limit_is_read_whole(tmp_path, monkeypatch):
    """The read is sized by fstat, not by the limit; a file grown since (within the limit) is still read whole."""
    store, document, limit = _growing(tmp_path, monkeypatch, b"12345")
    assert store.content(document, limit) == PDF + b"12345"


def test_content_in_the_database_over_the_limit_is_refused_without_loading_it(tmp_path):
    # the limit is above the healthy document's PDF (a few kB: its font is embedded, as PDF/A wants)
    settings, store = _store(tmp_path, [dict(document_id="BIG-BLOB", content_path=None, content=b"%PDF-" + b"x" * 50000,
                                             file=None)], limit=20000)
    got = _both(settings, store)
    assert got[("BIG-BLOB", 1)] == ("CONTENT_INVALID", "content is 50005 bytes, over rules.max_document_bytes 20000")


# --- 2 and 16. rows that aborted the scan, or passed while wrong --------------------------------------


def test_rows_that_aborted_the_scan_are_row_invalid_naming_the_column(tmp_path):
    settings, store = _store(tmp_path, [
        dict(document_id="TEXT-CONTENT", content_path=None, content="%PDF-1.4 stored as text", file=None),
        dict(document_id="NUL-PATH", content_path="documents/a\0b.pdf", file=None),
        dict(document_id="BOTH", content=PDF),  # content and content_path: the path won silently
        dict(document_id="HALF-VERSION", version=1.5),  # became version 1
        dict(document_id="CONTROL-TITLE", title="Compte rendu\x1b[2J\x07"),  # BUILD_ERROR with a traceback
        dict(document_id="LONG-FINESS", finess_geo="0B0999998" + "9" * 20),
        dict(document_id="LONG-TYPE", type_code="1" * 40),
        dict(document_id="D" * 65),
    ])
    got = _both(settings, store)
    expected = {
        ("TEXT-CONTENT", 1): "column dmp_document.content: str, not bytes",
        ("NUL-PATH", 1): "column dmp_document.content_path: contains a control character",
        ("BOTH", 1): "columns dmp_document.content and content_path are both set: keep only one",
        ("HALF-VERSION", None): "column dmp_document.version: not an integer",
        ("CONTROL-TITLE", 1): "column dmp_document.title: contains a control character",
        ("LONG-FINESS", 1): "column dmp_document.finess_geo: longer than 9 characters",
        ("LONG-TYPE", 1): "column dmp_document.type_code: longer than 32 characters",
        ("D" * 64 + "…", None): "column dmp_document.document_id: longer than 64 characters",
    }
    assert {k: got[k] for k in expected} == {k: ("ROW_INVALID", v) for k, v in expected.items()}


def test_an_escape_sequence_in_a_document_id_is_shown_escaped(tmp_path):
    settings, store = _store(tmp_path, [dict(document_id="EVIL\x1b[2J\x1b]0;pwned\x07")])
    got = _both(settings, store)
    assert got[("EVIL\\x1b[2J\\x1b]0;pwned\\x07", None)] == (
        "ROW_INVALID", "column dmp_document.document_id: contains a control character")


# --- 5. a store without primary key -------------------------------------------------------------------


def test_repeated_and_empty_keys_in_a_keyless_store_are_row_invalid(tmp_path):
    settings, store = _store(tmp_path, [
        dict(document_id="TWICE"), dict(document_id="TWICE"), dict(document_id="TWICE", patient_id="OTHER-PATIENT"),
        dict(document_id=None), dict(document_id="NO-VERSION", version=None),
        dict(document_id="NO-PATIENT", patient_id=None),
    ], keyless=True)
    got = _both(settings, store)
    assert got[("TWICE", 1)] == ("ROW_INVALID", "(document_id, version) is on 3 rows of dmp_document: the key must be unique")
    assert got[("(none)", None)] == ("ROW_INVALID", "column dmp_document.document_id: empty (a key column)")
    assert got[("NO-VERSION", None)] == ("ROW_INVALID", "column dmp_document.version: empty (a key column)")
    assert got[("NO-PATIENT", None)] == ("ROW_INVALID", "column dmp_document.patient_id: empty (a key column)")
    assert "None" not in {k[0] for k in got}  # a NULL id was fed as the string "None"
    assert len(got) == 5  # the healthy one, TWICE once, three empty keys


def test_keys_that_differ_only_by_padding_are_one_repeated_key(tmp_path):
    """"A" and "A " were two rows read as one key: two documents with one uniqueId (the second rejected by the
    registry, or both in one submission set). A key with a tab or newline around it is refused."""
    settings, store = _store(tmp_path, [dict(document_id="PADDED"), dict(document_id="PADDED   "),
                                        dict(document_id="NEWLINE\n")], keyless=True)
    got = _both(settings, store)
    assert got[("PADDED", 1)] == ("ROW_INVALID", "(document_id, version) is on 2 rows of dmp_document: the key must be unique")
    assert got[("NEWLINE\\x0a", None)] == ("ROW_INVALID", "column dmp_document.document_id: contains a control character")


def test_a_null_key_at_a_batch_boundary_does_not_end_the_scan(tmp_path):
    """The keyset read compared rows to the last one read: a NULL there made every later comparison NULL."""
    settings, store = _store(tmp_path, [dict(document_id=f"A{i}", patient_id=None if i == 1 else "OK-P00001")
                                        for i in range(4)], keyless=True)
    seen = {c.document_id if hasattr(c, "document_id") else c.document.document_id for c in store.candidates(batch_size=1)}
    assert {"OK-D00001", "A0", "A2", "A3"} <= seen


# --- 15. control characters never reach a terminal or a log line ---------------------------------------


def test_dry_run_output_and_log_lines_carry_no_control_character(tmp_path):
    """An ESC sequence in a store value cleared the operator's screen in `run --dry-run`."""
    import logging

    from click.testing import CliRunner

    from connector import logs
    from connector.cli import main

    folder = h.make_folder(tmp_path)
    with sqlite3.connect(folder.store_db) as db:
        pid = db.execute("SELECT patient_id FROM dmp_patient LIMIT 1").fetchone()[0]
        for did, overrides in [("ESC\x1b[2J\x1b[H", {}), ("STATUS-ESC", {"status": "DRAFT\x1b]0;x\x07"}),
                               ("TYPE-ESC", {"type_code": "1\x1b[31m"}), ("C1-CSI", {"finess_geo": "0B\x9b2J"})]:
            row = h.document_row(did, pid, content_path="documents/none.pdf", **overrides)
            db.execute(f"INSERT INTO dmp_document ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       [str(v) if hasattr(v, "isoformat") else v for v in row.values()])
    result = CliRunner().invoke(main, ["run", "--dry-run", "--config", str(folder.cfg)])
    assert result.exit_code == 0, result.output
    assert "ESC\\x1b[2J\\x1b[H" in result.output  # shown, escaped
    assert not any(c in result.output for c in "\x1b\x07\x9b")

    record = logging.LogRecord("connector.run", logging.WARNING, __file__, 1, "document %s v%d: %s", (
        "DOC\x1b[2J", 1, "forged\nERROR connector.run: fake line"), None)
    for formatter in (logs.TextFormatter("%(levelname)s %(name)s: %(message)s"), logs.JsonFormatter()):
        line = formatter.format(record)
        assert "\n" not in line and "\x1b" not in line and "\\x1b" in line.replace("\\\\", "\\")


def test_a_file_swapped_after_its_probe_costs_its_row_in_a_dry_run(tmp_path, monkeypatch):
    """The dry run's PDF/A triage reads the file the probe looked at: swapped meanwhile for a link out of the
    content root, it is refused like any other, not read, and the scan goes on."""
    from connector import scan as scan_module
    from connector.rules import probe_of

    outside = tmp_path / "outside.pdf"
    outside.write_bytes(PDF)
    settings, store = _store(tmp_path, [dict(document_id="SWAPPED")])
    settings = make_settings(tmp_path, store={"url": settings.store.url, "content_root": str(settings.store.content_root)},
                             validation={"pdfa": "reject"})
    path = tmp_path / "store" / "documents" / "bad-00.pdf"

    def probe_then_swap(store, document, limit=None):
        if document.document_id != "SWAPPED":
            return real_probe(store, document, limit)
        path.unlink()
        os.symlink(outside, path)
        return probe_of(PDF)

    real_probe = scan_module.content_probe
    monkeypatch.setattr(scan_module, "content_probe", probe_then_swap)
    got = _decisions(settings, store, False)
    assert got[("SWAPPED", 1)] == ("CONTENT_INVALID", "content_path is outside store.content_root")
