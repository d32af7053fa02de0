"""PDF/A triage of a PDF body, before it is wrapped in a CDA whose XDS formatCode (`urn:ihe:iti:xds-sd:pdf:2008`)
the ANS labels "Document à corps non structuré en Pdf/A-1".

A cheap check, not a PDF/A validator (veraPDF is one): the file claims PDF/A in its XMP metadata
(`pdfaid:part`), is not encrypted, holds no JavaScript, and embeds its fonts. `validation.pdfa` says what a
problem does: nothing (`off`), a warning naming the document (`warn`, the default) or a skip with reason
CONTENT_NOT_PDFA (`reject`). Problems never quote the document's content (no font names, no metadata values).
"""

from __future__ import annotations

import io

import pikepdf
from lxml import etree

CONTENT_NOT_PDFA = "CONTENT_NOT_PDFA"
MODES = ("off", "warn", "reject")
PDFAID = "http://www.aiim.org/pdfa/ns/id/"
# Fonts whose program must be embedded (a Type0 font's program is its descendant CIDFont's; a Type3 font's
# glyphs are PDF content, embedded by definition).
_FONTS_WITH_PROGRAM = {"/Type1", "/MMType1", "/TrueType", "/CIDFontType0", "/CIDFontType2"}
_FONT_FILES = ("/FontFile", "/FontFile2", "/FontFile3")


def problems(content: bytes) -> list[str]:
    """What keeps `content` from passing for PDF/A; empty when nothing was found."""
    try:
        pdf = pikepdf.open(io.BytesIO(content))
    except pikepdf.PasswordError:
        return ["encrypted (a password is needed to open it)"]
    except Exception as exc:  # any parser failure: the DMP's readers may fail too
        return [f"not readable as a PDF ({type(exc).__name__})"]
    with pdf:
        found = []
        if pdf.is_encrypted:
            found.append("encrypted (/Encrypt)")
        part = _pdfa_part(pdf)
        if part is None:
            found.append("no PDF/A claim in its XMP metadata (pdfaid:part)")
        javascript, unembedded = _walk(pdf)
        if javascript:
            found.append("holds JavaScript (/JavaScript or /JS)")
        if unembedded:
            found.append(f"{unembedded} font(s) not embedded")
        return found


def _pdfa_part(pdf: pikepdf.Pdf) -> str | None:
    """pdfaid:part of the document's XMP metadata (element or attribute form), None if absent or unreadable."""
    metadata = pdf.Root.get("/Metadata")
    if not isinstance(metadata, pikepdf.Stream):
        return None
    try:
        xmp = etree.fromstring(metadata.read_bytes(), etree.XMLParser(resolve_entities=False, no_network=True))
    except (etree.XMLSyntaxError, pikepdf.PdfError, ValueError):
        return None
    for element in xmp.iter():
        value = element.get(f"{{{PDFAID}}}part") or (element.text if element.tag == f"{{{PDFAID}}}part" else None)
        if value and value.strip():
            return value.strip()
    return None


def _walk(pdf: pikepdf.Pdf) -> tuple[bool, int]:
    """(JavaScript present, fonts without an embedded program) over every object of the file."""
    names = pdf.Root.get("/Names")
    javascript = isinstance(names, pikepdf.Dictionary) and "/JavaScript" in names
    unembedded = 0
    for obj in pdf.objects:
        if isinstance(obj, pikepdf.Stream):
            obj = obj.stream_dict
        if not isinstance(obj, pikepdf.Dictionary):
            continue
        if "/JS" in obj or obj.get("/S") == pikepdf.Name.JavaScript:
            javascript = True
        if obj.get("/Type") == pikepdf.Name.Font and str(obj.get("/Subtype")) in _FONTS_WITH_PROGRAM:
            descriptor = obj.get("/FontDescriptor")
            if not isinstance(descriptor, pikepdf.Dictionary) or not any(f in descriptor for f in _FONT_FILES):
                unembedded += 1
    return javascript, unembedded
