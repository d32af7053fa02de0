"""The sample store: fictitious patients and documents covering every eligibility case.

`create_sample_store(directory)` writes `directory/store.sqlite3` (the store contract's tables) and small,
valid PDF files under `directory/documents/`; point `store.url` at the database and `store.content_root`
at `directory`. `expected_decisions()` says what the rules decide for each document with an empty ledger
and the test settings of tests/conftest.py (environment test, sites 0B0999998 and 0B0999997).
Every identity is fictitious and uses the test INS OID (or, on purpose, another one); see samples/README.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from connector import ins
from connector.store import dmp_document, dmp_patient, metadata

STORE_FILE = "store.sqlite3"
DOCUMENTS_DIR = "documents"
SITE_MAIN = "0B0999998"
SITE_CLINIC = "0B0999997"
SITE_UNCONFIGURED = "0B0999996"


def nir(nir13: str) -> str:
    """The 15-character matricule: the NIR and its computed key."""
    return f"{nir13}{ins.nir_key(nir13):02d}"


def _bad_key(nir13: str) -> str:
    return f"{nir13}{ins.nir_key(nir13) % 97 + 1:02d}"  # always a different key in 01..97


@dataclass(frozen=True)
class _P:
    patient_id: str
    ins_matricule: str | None
    family: str
    given: str
    sex: str
    birth_date: dt.date
    birth_place_code: str | None
    identity_status: str = "QUAL"
    ins_oid: str = ins.INS_NIR_TEST
    used_family: str | None = None
    opposed: bool = False
    deceased_at: dt.date | None = None
    case: str = ""


@dataclass(frozen=True)
class _D:
    document_id: str
    patient_id: str
    type_code: str
    title: str
    expected: str | None
    case: str
    version: int = 1
    finess_geo: str = SITE_MAIN
    status: str = "VALIDATED"
    content: str = "file"  # file | inline | missing | empty | not_pdf
    author: tuple[str | None, str, str, str] = ("10001234567", "MARTIN", "Claire", "G15_10/SM26")
    flags: dict = field(default_factory=dict)
    activity: str | None = None  # dmp_document.activity: encounter class or JDV_J59 code; None: the default


PATIENTS = (
    _P("IPP-001", nir("2850633063041"), "LEFÈVRE", "Zoé Marie-Ange", "F", dt.date(1985, 6, 14), "33063",
       used_family="LEFÈVRE-DURAND", case="qualified INS, several documents, accents in names"),
    _P("IPP-002", nir("172092A004112"), "N'DIAYE", "Mamadou Ibrahima", "M", dt.date(1972, 9, 8), "2A004",
       case="qualified INS, born in Corse-du-Sud (2A), apostrophe in name"),
    _P("IPP-003", nir("290112B033087"), "SANTONI", "Marie-Dominique", "F", dt.date(1990, 11, 23), "2B033",
       case="qualified INS, born in Haute-Corse (2B)"),
    _P("IPP-004", nir("1550459350017"), "GARÇON", "Ludovic", "M", dt.date(1955, 4, 2), "59350",
       identity_status="PROV", case="provisional identity"),
    _P("IPP-005", nir("2481299139005"), "D'ALMEIDA", "Inês", "F", dt.date(1948, 12, 30), "99139",
       identity_status="RECUP", case="recovered identity (born abroad)"),
    _P("IPP-006", nir("1010729232120"), "LE GOFF", "Yann Erwan", "M", dt.date(2001, 7, 19), "29232",
       identity_status="VALI", case="validated (not qualified) identity"),
    _P("IPP-007", _bad_key("2690213055231"), "ÉTIENNE", "Chloé", "F", dt.date(1969, 2, 28), "13055",
       case="NIR whose key does not verify"),
    _P("IPP-008", nir("1771067482066"), "MÜLLER", "Jean-Noël", "M", dt.date(1977, 10, 10), "67482",
       opposed=True, case="patient opposed to feeding"),
    _P("IPP-009", nir("2310521231009"), "BÉRANGER", "Odile Françoise", "F", dt.date(1931, 5, 5), "21231",
       deceased_at=dt.date(2026, 10, 2), case="deceased patient"),
    _P("IPP-010", nir("2110344109151"), "KOUASSI-N'GUESSAN", "Aya Zoé", "F", dt.date(2011, 3, 17), "44109",
       case="minor: documents with masking flags"),
    _P("IPP-011", nir("2930876217044"), "ÖZTÜRK", "Elif", "F", dt.date(1993, 8, 1), None,
       case="qualified INS but birth place missing"),
    _P("IPP-012", nir("1880531555123"), "ROUSSEAU", "Théo", "M", dt.date(1988, 5, 9), "31555",
       ins_oid=ins.INS_NIR, case="real-NIR OID in a test store"),
    _P("IPP-013", nir("2020138185077"), "FABRE", "Léa", "F", dt.date(2002, 1, 26), "38185",
       ins_oid=ins.INS_NIR_DEMO, case="demonstration INS OID"),
)

_RADIOLOGIST = ("10009876543", "NGUYEN", "Thi Hương", "G15_10/SM44")
_CARDIOLOGIST = ("10004567890", "O'CONNOR", "Seán", "G15_10/SM04")
_PEDIATRICIAN = ("10007654321", "DUBOIS-LÉGER", "Anaïs", "G15_10/SM40")

DOCUMENTS = (
    _D("DOC-001", "IPP-001", "11490-0", "Lettre de liaison à la sortie", None,
       "discharge letter, inpatient stay (activity I: its own submission set)", activity="I"),
    _D("DOC-002", "IPP-001", "11488-4", "Compte rendu de consultation de cardiologie", None,
       "consultation (activity 07, a JDV_J59 code)", author=_CARDIOLOGIST, activity="07"),
    _D("DOC-003", "IPP-001", "18748-4", "Compte rendu d'IRM du genou", None,
       "imaging report, version 2 (the store keeps the latest version), other site",
       version=2, finess_geo=SITE_CLINIC, author=_RADIOLOGIST),
    _D("DOC-004", "IPP-001", "34794-8", "Compte rendu de RCP d'oncologie", None, "content stored inline",
       content="inline"),
    _D("DOC-005", "IPP-002", "11490-0", "Lettre de liaison à la sortie", None, "Corsica 2A NIR"),
    _D("DOC-006", "IPP-003", "11488-4", "Compte rendu de consultation", None, "Corsica 2B NIR",
       finess_geo=SITE_CLINIC),
    _D("DOC-007", "IPP-003", "11488-4", "Compte rendu de consultation externe", "SITE_UNKNOWN",
       "FINESS géographique not configured", finess_geo=SITE_UNCONFIGURED),
    _D("DOC-008", "IPP-004", "11490-0", "Lettre de liaison à la sortie", "INS_NOT_QUALIFIED", "PROV identity"),
    _D("DOC-009", "IPP-005", "11488-4", "Compte rendu de consultation", "INS_NOT_QUALIFIED", "RECUP identity"),
    _D("DOC-010", "IPP-006", "11488-4", "Compte rendu de consultation", "INS_NOT_QUALIFIED", "VALI identity"),
    _D("DOC-011", "IPP-007", "11490-0", "Lettre de liaison à la sortie", "INS_INVALID", "bad NIR key"),
    _D("DOC-012", "IPP-008", "11488-4", "Compte rendu de consultation", "PATIENT_OPPOSED", "opposed patient"),
    _D("DOC-013", "IPP-009", "11490-0", "Lettre de liaison à la sortie", "PATIENT_DECEASED", "deceased patient"),
    _D("DOC-014", "IPP-010", "11488-4", "Consultation de gynécologie (mineure)", None,
       "minor, invisible to legal representatives", author=_PEDIATRICIAN,
       flags={"invisible_to_legal_representatives": True}),
    _D("DOC-015", "IPP-010", "11502-2", "Compte rendu d'examens biologiques", None,
       "minor, masked to professionals, invisible to patient and legal representatives", author=_PEDIATRICIAN,
       flags={"mask_professionals": True, "invisible_to_patient": True,
              "invisible_to_legal_representatives": True}),
    _D("DOC-016", "IPP-002", "11488-4", "Compte rendu de consultation (brouillon)", "DOCUMENT_NOT_VALIDATED",
       "draft", status="DRAFT"),
    _D("DOC-017", "IPP-002", "11488-4", "Compte rendu de consultation (annulé)", "DOCUMENT_NOT_VALIDATED",
       "cancelled", status="CANCELLED"),
    _D("DOC-018", "IPP-002", "18748-4", "Compte rendu de scanner thoracique", "CONTENT_MISSING",
       "content_path names a file that does not exist", content="missing", author=_RADIOLOGIST),
    _D("DOC-019", "IPP-003", "11526-1", "Compte rendu d'anatomopathologie", "TYPE_NOT_ALLOWED",
       "LOINC type code not in JDV_J07"),
    _D("DOC-020", "IPP-099", "11490-0", "Lettre de liaison à la sortie", "PATIENT_UNKNOWN",
       "no dmp_patient row for the patient_id"),
    _D("DOC-021", "IPP-011", "11488-4", "Compte rendu de consultation", "IDENTITY_INCOMPLETE",
       "birth place (birth_place_code) missing"),
    _D("DOC-022", "IPP-012", "11490-0", "Lettre de liaison à la sortie", "ENVIRONMENT_MISMATCH",
       "real-NIR OID while dmp.environment is test"),
    _D("DOC-023", "IPP-013", "11490-0", "Lettre de liaison à la sortie", None, "demonstration OID on test"),
    _D("DOC-024", "IPP-013", "11488-4", "Compte rendu de consultation", "METADATA_MISSING", "no author RPPS",
       author=(None, "SECRÉTARIAT", "Médical", "G15_10/SM26")),
    _D("DOC-025", "IPP-013", "18748-4", "Compte rendu d'échographie", "CONTENT_INVALID", "empty file",
       content="empty", author=_RADIOLOGIST),
    _D("DOC-026", "IPP-013", "11488-4", "Compte rendu de consultation", "CONTENT_INVALID",
       "mime type application/pdf but the file is plain text", content="not_pdf"),
    _D("DOC-027", "IPP-013", "11488-4", "Compte rendu de consultation " + "très détaillé " * 20, "VALUE_TOO_LONG",
       "title over 255 characters"),
    _D("DOC-028", "IPP-013", "11488-4", "Compte rendu de consultation", "ACTIVITY_INVALID",
       "activity SA01 (a facility type, not in JDV_J59)", activity="SA01"),
    _D("DOC-029", "IPP-002", "11488-4", "Compte rendu de consultation (pour MSSanté)", "NOT_FOR_DMP",
       "its sender marked it not destined to the DMP (HL7 intake: DESTDMP = N)", status="NOT_FOR_DMP"),
)


def expected_decisions() -> dict[tuple[str, int], str | None]:
    """(document_id, version) -> None if eligible, else the expected reason code."""
    return {(d.document_id, d.version): d.expected for d in DOCUMENTS}


def create_sample_store(directory: Path) -> Path:
    """Write (or rewrite, identically) the sample store in `directory`; returns the database path."""
    directory = Path(directory)
    documents_dir = directory / DOCUMENTS_DIR
    documents_dir.mkdir(parents=True, exist_ok=True)
    db_path = directory / STORE_FILE
    db_path.unlink(missing_ok=True)

    document_rows = []
    for d in DOCUMENTS:
        path = directory / _relative_path(d)
        body = _content(d)
        path.unlink(missing_ok=True)
        if d.content in ("file", "empty", "not_pdf"):
            path.write_bytes(body)
        document_rows.append(_document_row(d, body if d.content == "inline" else None))

    engine = sa.create_engine(f"sqlite:///{db_path}", future=True)
    try:
        metadata.create_all(engine, tables=[dmp_patient, dmp_document])
        with engine.begin() as conn:
            conn.execute(sa.insert(dmp_patient), [_patient_row(p) for p in PATIENTS])
            conn.execute(sa.insert(dmp_document), document_rows)
    finally:
        engine.dispose()
    return db_path


# The sample store's second day (issue 17, corrections of documents already fed): apply it after a first run.
CORRECTIONS = (
    ("DOC-001", "a new version (v2): it replaces v1 in the DMP"),
    ("DOC-002", "masked to professionals since: its entry is replaced with MASQUE_PS"),
    ("DOC-014", "cancelled in the DPI: withdrawn from the DMP (Deleted)"),
    ("DOC-015", "the announcement consultation took place (announced_at): made visible to the patient"),
)


def apply_corrections(directory: Path, announced_at: dt.datetime | None = None) -> None:
    """Change the sample store as a DPI would after its documents were fed (see CORRECTIONS); `announced_at` (local
    time, default: the day before) is when DOC-015's announcement consultation took place."""
    announced_at = announced_at or (dt.datetime.now() - dt.timedelta(days=1)).replace(microsecond=0)
    engine = sa.create_engine(f"sqlite:///{Path(directory) / STORE_FILE}", future=True)
    d = dmp_document
    try:
        with engine.begin() as conn:
            if "announced_at" not in {c["name"] for c in sa.inspect(conn).get_columns(d.name)}:
                conn.exec_driver_sql("ALTER TABLE dmp_document ADD COLUMN announced_at DATETIME")
            v1 = dict(conn.execute(sa.select(d).where(d.c.document_id == "DOC-001", d.c.version == 1)).mappings().one())
            conn.execute(sa.insert(d).values({**v1, "version": 2, "title": f"{v1['title']} (corrigée)",
                                              "updated_at": v1["updated_at"] + dt.timedelta(days=1)}))
            conn.execute(sa.update(d).where(d.c.document_id == "DOC-002").values(mask_professionals=True))
            conn.execute(sa.update(d).where(d.c.document_id == "DOC-014").values(status="CANCELLED"))
            conn.execute(sa.update(d).where(d.c.document_id == "DOC-015").values(announced_at=announced_at))
    finally:
        engine.dispose()


def expected_entries_after_corrections() -> dict[str, list[tuple[int, str]]]:
    """document_id -> its DMP entries (CDA versionNumber, status), oldest first, once the first day was fed and
    the corrections sent."""
    entries = {d: [(v, "Approved")] for (d, v), reason in expected_decisions().items() if reason is None}
    entries.update({
        "DOC-001": [(1, "Deprecated"), (2, "Approved")],
        "DOC-002": [(1, "Deprecated"), (2, "Approved")],
        "DOC-014": [(1, "Deleted")],
        "DOC-015": [(1, "Deprecated"), (2, "Approved")],
    })
    return entries


def _patient_row(p: _P) -> dict:
    return dict(
        patient_id=p.patient_id,
        ins_matricule=p.ins_matricule,
        ins_oid=p.ins_oid,
        identity_status=p.identity_status,
        birth_family_name=p.family,
        birth_given_names=p.given,
        used_family_name=p.used_family or p.family,
        used_given_name=p.given.split()[0],
        sex=p.sex,
        birth_date=p.birth_date,
        birth_place_code=p.birth_place_code,
        opposed_to_feeding=p.opposed,
        deceased_at=p.deceased_at,
    )


def _document_row(d: _D, inline: bytes | None) -> dict:
    number = int(d.document_id.split("-")[1])
    created = dt.datetime(2026, 11, 1, 10, 0) + dt.timedelta(days=number % 20, minutes=7 * number)
    rpps, family, given, specialty = d.author
    return dict(
        document_id=d.document_id,
        version=d.version,
        patient_id=d.patient_id,
        finess_geo=d.finess_geo,
        type_code=d.type_code,
        title=d.title,
        created_at=created,
        service_start=created - dt.timedelta(days=2),
        service_stop=created - dt.timedelta(hours=3),
        author_rpps=rpps,
        author_family_name=family,
        author_given_name=given,
        author_specialty_code=specialty,
        legal_authenticator_rpps=rpps,
        status=d.status,
        mime_type="application/pdf",
        content_path=None if d.content == "inline" else _relative_path(d),
        content=inline,
        mask_professionals=d.flags.get("mask_professionals", False),
        invisible_to_patient=d.flags.get("invisible_to_patient", False),
        invisible_to_legal_representatives=d.flags.get("invisible_to_legal_representatives", False),
        updated_at=created + dt.timedelta(minutes=1),
        activity=d.activity,
    )


def _relative_path(d: _D) -> str:
    return f"{DOCUMENTS_DIR}/{d.document_id}-v{d.version}.pdf"


def _content(d: _D) -> bytes:
    if d.content == "empty":
        return b""
    if d.content == "not_pdf":
        return f"{d.title}\nexport texte par erreur\n".encode()
    return minimal_pdf([d.title, f"{d.document_id} version {d.version}", "Document fictif - données de test"])


# --- a minimal, valid PDF 1.4 ----------------------------------------------------------------


_PDFA_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/" pdfaid:part="1" pdfaid:conformance="B"/>
</rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def minimal_pdf(lines: list[str], pdfa: bool = True) -> bytes:
    """One A4 page showing `lines`; a correct xref table so strict readers accept it.

    With `pdfa` (the samples' case) it claims PDF/A-1b in its XMP metadata and draws its text with an embedded
    Type 3 font (Pillow's built-in bitmap font, 6×11 pixels), so it passes the connector's PDF/A triage
    (connector/pdfa.py); no PDF/A validator checked it (it has no OutputIntent, for one). Without: Helvetica,
    not embedded, no claim, as many office PDFs are."""
    text = ["BT", "/F1 14 Tf", "72 770 Td", "18 TL"]
    for line in lines:
        text.append(f"({_pdf_string(line)}) Tj T*")
    text.append("ET")
    stream = "\n".join(text).encode("cp1252")
    catalog = b"<< /Type /Catalog /Pages 2 0 R%s >>" % (b" /Metadata 6 0 R" if pdfa else b"")
    objects = [
        catalog,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        _stream(b"", stream),
    ]
    if pdfa:
        objects[3], glyphs = _bitmap_font(sorted(set("".join(lines).encode("cp1252"))), first_object=7)
        objects.append(_stream(b"/Type /Metadata /Subtype /XML ", _PDFA_XMP.encode()))
        objects += glyphs
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # binary comment: marks the file as binary
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # each entry is exactly 20 bytes
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    file_id = b"/ID [<%s> <%s>] " % ((hashlib.md5(out).hexdigest().encode(),) * 2) if pdfa else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, file_id, xref)
    return bytes(out)


def _stream(entries: bytes, data: bytes) -> bytes:
    return b"<< %s/Length %d >>\nstream\n" % (entries, len(data)) + data + b"\nendstream"


def _bitmap_font(codes: list[int], first_object: int) -> tuple[bytes, list[bytes]]:
    """A Type 3 font of the cp1252 `codes` (its dictionary, and its glyph procedures as objects numbered from
    `first_object`): each glyph is the image mask of Pillow's built-in bitmap font, baseline 2 pixels up."""
    from PIL import ImageFont  # a dependency of pikepdf

    font = ImageFont.load_default_imagefont()
    procs, names, glyphs = [], [], []
    for code in codes:
        mask = font.getmask(bytes([code]).decode("cp1252"))
        width, height = mask.size
        rows = [sum(1 << (7 - x % 8) for x in range(width) if mask.getpixel((x, y))).to_bytes((width + 7) // 8, "big")
                for y in range(height)] if width and height else []
        name = b"/c%02X" % code
        body = (b"%d 0 0 -2 %d 9 d1\n" % (width, width) + (
            b"q %d 0 0 %d 0 -2 cm BI /W %d /H %d /IM true /BPC 1 /D [1 0] /F /AHx ID %s> EI Q"
            % (width, height, width, height, b"".join(rows).hex().encode()) if rows else b""))
        glyphs.append(_stream(b"", body))
        procs.append(b"%s %d 0 R" % (name, first_object + len(glyphs) - 1))
        names.append((code, name, width))
    font_dict = (
        b"<< /Type /Font /Subtype /Type3 /FontBBox [0 -2 8 9] /FontMatrix [0.0909 0 0 0.0909 0 0] "
        b"/CharProcs << %s >> /Encoding << /Type /Encoding /Differences [%s] >> /FirstChar %d /LastChar %d "
        b"/Widths [%s] /Resources << >> >>" % (
            b" ".join(procs), b" ".join(b"%d %s" % (c, n) for c, n, _ in names), codes[0], codes[-1],
            b" ".join(b"%d" % next((w for c, _, w in names if c == code), 0) for code in range(codes[0], codes[-1] + 1)))
    )
    return font_dict, glyphs


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
