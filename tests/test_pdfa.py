"""PDF/A triage (connector/pdfa.py): the claim in the XMP metadata, encryption, JavaScript, embedded fonts."""

from __future__ import annotations

import io

import pikepdf
import pytest

from connector import pdfa
from connector.samples import minimal_pdf

XMP_ATTRIBUTE = b"""<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/" pdfaid:part="1" pdfaid:conformance="B"/>
</rdf:RDF></x:xmpmeta><?xpacket end="w"?>"""
XMP_ELEMENT = XMP_ATTRIBUTE.replace(b' pdfaid:part="1" pdfaid:conformance="B"/>',
                                    b"><pdfaid:part>2</pdfaid:part></rdf:Description>")
XMP_NO_CLAIM = XMP_ATTRIBUTE.replace(b' pdfaid:part="1"', b"")


def make_pdf(*, xmp: bytes | None = XMP_ATTRIBUTE, font: str = "embedded", javascript: str | None = None,
             encrypt: str | None = None) -> bytes:
    pdf = pikepdf.new()
    fonts = {}
    if font == "embedded":
        program = pdf.make_stream(b"\x00\x01\x00\x00 not a real font program")
        descriptor = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.FontDescriptor, FontName=pikepdf.Name.F,
                                                           FontFile2=program))
        fonts["/F1"] = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.TrueType,
                                                            BaseFont=pikepdf.Name.F, FontDescriptor=descriptor))
    elif font == "standard":
        fonts["/F1"] = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1,
                                                            BaseFont=pikepdf.Name.Helvetica))
    page = pikepdf.Dictionary(Type=pikepdf.Name.Page, MediaBox=[0, 0, 595, 842],
                              Resources=pikepdf.Dictionary(Font=pikepdf.Dictionary(fonts)),
                              Contents=pdf.make_stream(b"BT /F1 12 Tf 72 770 Td (Document fictif) Tj ET"))
    pdf.pages.append(pikepdf.Page(page))
    if xmp is not None:
        metadata = pdf.make_stream(xmp)
        metadata.Type, metadata.Subtype = pikepdf.Name.Metadata, pikepdf.Name.XML
        pdf.Root.Metadata = metadata
    if javascript == "open_action":
        pdf.Root.OpenAction = pdf.make_indirect(pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("1")))
    elif javascript == "names":
        pdf.Root.Names = pikepdf.Dictionary(JavaScript=pikepdf.Dictionary(Names=[]))
    out = io.BytesIO()
    options = {}
    if encrypt:
        options["encryption"] = pikepdf.Encryption(owner="proprietaire", user="" if encrypt == "owner" else "secret")
    pdf.save(out, **options)
    return out.getvalue()


def test_a_clean_pdfa_claim_has_no_problem():
    assert pdfa.problems(make_pdf()) == []
    assert pdfa.problems(make_pdf(xmp=XMP_ELEMENT)) == []  # pdfaid:part as an element (PDF/A-2 here)


@pytest.mark.parametrize("build, problem", [
    (lambda: make_pdf(xmp=None), "no PDF/A claim in its XMP metadata (pdfaid:part)"),
    (lambda: make_pdf(xmp=XMP_NO_CLAIM), "no PDF/A claim in its XMP metadata (pdfaid:part)"),
    (lambda: make_pdf(xmp=b"<not xml"), "no PDF/A claim in its XMP metadata (pdfaid:part)"),
    (lambda: make_pdf(font="standard"), "1 font(s) not embedded"),
    (lambda: make_pdf(javascript="open_action"), "holds JavaScript (/JavaScript or /JS)"),
    (lambda: make_pdf(javascript="names"), "holds JavaScript (/JavaScript or /JS)"),
    (lambda: make_pdf(encrypt="owner"), "encrypted (/Encrypt)"),
    (lambda: make_pdf(encrypt="user"), "encrypted (a password is needed to open it)"),
    (lambda: b"%PDF-1.4\nnot really a PDF\n%%EOF\n", "not readable as a PDF"),
])
def test_each_problem_is_found(build, problem):
    found = pdfa.problems(build())
    assert any(p.startswith(problem) for p in found), found


def test_a_plain_pdf_with_a_standard_font_is_not_pdfa():
    assert pdfa.problems(minimal_pdf(["Document fictif"], pdfa=False)) == [
        "no PDF/A claim in its XMP metadata (pdfaid:part)", "1 font(s) not embedded"]


# --- in the scan and the run ------------------------------------------------------------------------------


def _sample_store_with_one_plain_pdf(tmp_path):
    """The sample store (its PDFs claim PDF/A) with DOC-001's file replaced by a plain PDF."""
    from connector import samples

    directory = tmp_path / "samples"
    samples.create_sample_store(directory)
    (directory / "documents" / "DOC-001-v1.pdf").write_bytes(minimal_pdf(["Document fictif"], pdfa=False))
    return directory


def _decisions(tmp_path, directory, mode: str, load_content: bool) -> dict:
    from conftest import make_settings
    from connector.scan import scan
    from connector.store import Store

    settings = make_settings(tmp_path, validation={"pdfa": mode, "schematron": "off"})
    store = Store(f"sqlite:///{directory / 'store.sqlite3'}", directory)
    return {d.document_id: d for group in scan(store, None, settings, load_content=load_content) for d in group}


@pytest.mark.parametrize("load_content", [True, False])  # a run, a dry run
def test_reject_skips_a_pdf_that_is_not_pdfa(tmp_path, load_content):
    decided = _decisions(tmp_path, _sample_store_with_one_plain_pdf(tmp_path), "reject", load_content)
    d = decided["DOC-001"]
    assert (d.reason, d.detail) == (pdfa.CONTENT_NOT_PDFA, "not PDF/A (validation.pdfa = reject): no PDF/A claim "
                                    "in its XMP metadata (pdfaid:part); 1 font(s) not embedded")
    assert decided["DOC-002"].eligible and decided["DOC-002"].warnings == ()  # the samples claim PDF/A


def test_warn_feeds_it_with_a_warning_and_off_says_nothing(tmp_path):
    directory = _sample_store_with_one_plain_pdf(tmp_path)
    warned = _decisions(tmp_path, directory, "warn", True)["DOC-001"]
    assert warned.eligible and warned.warnings == (
        "CONTENT_NOT_PDFA: no PDF/A claim in its XMP metadata (pdfaid:part); 1 font(s) not embedded",)
    assert _decisions(tmp_path, directory, "warn", False)["DOC-001"].warnings == ()  # a dry run reads no PDF whole
    off = _decisions(tmp_path, directory, "off", True)["DOC-001"]
    assert off.eligible and off.warnings == ()


def test_a_run_logs_the_warning_by_document_id_and_counts_it_in_status(tmp_path, caplog):
    import json
    import logging

    from click.testing import CliRunner

    from connector import config
    from connector.actions import demo, run as run_action
    from connector.cli import main
    from connector.sandbox import server

    demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    (tmp_path / "store" / "documents" / "DOC-001-v1.pdf").write_bytes(minimal_pdf(["Document fictif"], pdfa=False))
    with server.serve(pki_dir=tmp_path / "pki", state_path=tmp_path / "sandbox.sqlite3") as sandbox:
        settings = config.load(demo.prepare_folder(tmp_path, sandbox.url))
        with caplog.at_level(logging.WARNING, logger="connector.run"):
            summary = run_action.run(settings)
    assert summary.warnings == {"CONTENT_NOT_PDFA": 1} and summary.counts["failed"] == 0
    assert "warning CONTENT_NOT_PDFA" in summary.text()
    (line,) = [r.getMessage() for r in caplog.records if "CONTENT_NOT_PDFA" in r.getMessage()]
    assert line.startswith("document DOC-001 v1: CONTENT_NOT_PDFA: ")
    result = CliRunner().invoke(main, ["status", "--format", "json", "--config", str(tmp_path / "dmp-connector.toml")])
    (last,) = json.loads(result.output)["last_runs"]
    assert last["counts"]["warning:CONTENT_NOT_PDFA"] == 1


def test_an_author_specialty_outside_j01_is_fed_without_it_and_said(tmp_path):
    """Carried by neither the CDA nor the metadata (README, store contract): the operator hears of it."""
    import sqlite3

    from connector import samples
    from connector.scan import SPECIALTY_NOT_IN_J01

    directory = tmp_path / "samples"
    samples.create_sample_store(directory)
    with sqlite3.connect(directory / "store.sqlite3") as db:
        db.execute("UPDATE dmp_document SET author_specialty_code = 'S' || 'PECIALITE-INCONNUE' WHERE document_id = 'DOC-001'")
    decided = _decisions(tmp_path, directory, "warn", True)
    assert decided["DOC-001"].eligible
    assert [w.split(":")[0] for w in decided["DOC-001"].warnings] == [SPECIALTY_NOT_IN_J01]
    assert decided["DOC-002"].warnings == ()  # a J01 specialty: nothing to say
