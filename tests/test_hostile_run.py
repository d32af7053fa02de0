"""Issue 15's closing run: one store mixing every hostile row the issue lists with healthy documents of the same
patients, fed by the real `dmp-connector run` (a process of its own, a PostgreSQL ledger, the sandbox DMP). The
run finishes by itself, each hostile row gets the decision the README promises, every healthy document is fed
exactly once, and no file from outside the content root reaches the DMP. (`hostile_store` also serves the
memory measurement of that run: speed and memory go in bench/, never in a test.)"""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

from lxml import etree

import delivery_harness as h
from connector.samples import minimal_pdf

PDF = minimal_pdf(["Document fictif"])
SECRET = minimal_pdf(["HORS DU MAGASIN"])  # a valid PDF outside the content root: must never be sent
ZIP_AS_PDF = b"%PDF-1.4\nPK\x03\x04" + bytes(range(256)) * 4 + b"\nstartxref\n9\n%%EOF\n"
SPARSE_BYTES = 3 * 2**30  # 3 GB on paper, nothing on disk (it took 3.2 GB of memory)


def hostile_store(directory: Path) -> tuple[set, dict]:
    """`directory/store` (the content root) and `directory/outside`: 6 healthy documents of 3 patients and,
    beside them, every hostile row of issue 15, in a store without keys (a DPI's view). Returns the healthy
    keys and, per hostile document id, the (state, reason) the ledger must end with (None: no ledger row)."""
    store, outside = directory / "store", directory / "outside"
    healthy = set(h.synthetic_store(store, 6, seed=15, per_patient=(2, 2), prefix="OK"))
    documents = store / "documents"
    outside.mkdir(parents=True)
    (outside / "secret.pdf").write_bytes(SECRET)
    os.symlink(outside / "secret.pdf", documents / "link-out.pdf")
    os.symlink(outside, documents / "dir-out")
    os.mkfifo(documents / "fifo.pdf")
    with open(documents / "sparse.pdf", "wb") as f:
        f.truncate(SPARSE_BYTES)
    (documents / "ok.pdf").write_bytes(PDF)
    (documents / "html.pdf").write_bytes(b"%PDF-<html><script>x</script></html>%%EOF")
    (documents / "zip.pdf").write_bytes(ZIP_AS_PDF)

    path = "documents/ok.pdf"
    rows = {  # document id: (the row's changes, the ledger's (state, reason), None if no ledger row)
        "DOTDOT": (dict(content_path="../outside/secret.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "ABSOLUTE": (dict(content_path=str(outside / "secret.pdf")), ("SKIPPED", "CONTENT_INVALID")),
        "SYMLINK": (dict(content_path="documents/link-out.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "SYMLINK-DIR": (dict(content_path="documents/dir-out/secret.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "FIFO": (dict(content_path="documents/fifo.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "DEV-ZERO": (dict(content_path="/dev/zero"), ("SKIPPED", "CONTENT_INVALID")),
        "SPARSE-3GB": (dict(content_path="documents/sparse.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "HTML-PDF": (dict(content_path="documents/html.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "ZIP-PDF": (dict(content_path="documents/zip.pdf"), ("SKIPPED", "CONTENT_INVALID")),
        "TEXT-CONTENT": (dict(content="%PDF-1.4 stored as text"), ("SKIPPED", "ROW_INVALID")),
        "NUL-PATH": (dict(content_path="documents/a\0b.pdf"), ("SKIPPED", "ROW_INVALID")),
        "BOTH": (dict(content_path=path, content=PDF), ("SKIPPED", "ROW_INVALID")),
        "HALF-VERSION": (dict(content_path=path, version=1.5), None),  # no integer version: no ledger row
        "CONTROL-TITLE": (dict(content_path=path, title="Compte rendu\x1b[2J\x07"), ("SKIPPED", "ROW_INVALID")),
        "ESC\x1b[2J\x1b]0;x\x07": (dict(content_path=path), None),  # a key that cannot be shown: no ledger row
        "LONG-FINESS": (dict(content_path=path, finess_geo="0B0999998" + "9" * 20), ("SKIPPED", "ROW_INVALID")),
        "LONG-TYPE": (dict(content_path=path, type_code="1" * 40), ("SKIPPED", "ROW_INVALID")),
        "D" * 65: (dict(content_path=path), None),  # longer than the ledger's key column
        # a specialty outside JDV_J01 is carried neither by the CDA nor by the metadata (README): fed without it
        "LONG-SPECIALTY": (dict(content_path=path, author_specialty_code="G15_10/" + "S" * 293), ("FED", None)),
        "BAD-RPPS": (dict(content_path=path, legal_authenticator_rpps="ABC"), ("SKIPPED", "METADATA_MISSING")),
        "MIME-PARAM": (dict(content_path=path, mime_type="application/pdf; charset=binary"), ("SKIPPED", "CONTENT_INVALID")),
        "TWICE": (dict(content_path=path), ("SKIPPED", "ROW_INVALID")),
    }
    with sqlite3.connect(store / "store.sqlite3") as db:
        for table in ("dmp_patient", "dmp_document"):  # a view: no primary key
            db.executescript(f"CREATE TABLE t AS SELECT * FROM {table}; DROP TABLE {table}; ALTER TABLE t RENAME TO {table};")
        pids = [r[0] for r in db.execute("SELECT patient_id FROM dmp_patient ORDER BY patient_id")]
        extra = [("TWICE", dict(content_path=path)), (None, dict(content_path=path))]  # a repeated key, a NULL key
        for i, (did, changes) in enumerate([(d, c) for d, (c, _) in rows.items()] + extra):
            row = h.document_row(did, pids[i % len(pids)], n=i, content_path=None)
            row.update(changes)
            db.execute(f"INSERT INTO dmp_document ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       [str(v) if hasattr(v, "isoformat") else v for v in row.values()])
    return healthy, {did: outcome for did, (_, outcome) in rows.items()}


def configure(directory: Path, sandbox_url: str, ledger_url: str) -> Path:
    folder = h.make_folder(directory)
    return folder.configure(sandbox_url, ledger={"url": ledger_url}, store={"content_root": str(directory / "store")})


def sent_pdfs(sandbox_state: Path) -> list[bytes]:
    """The PDFs the sandbox received, out of their CDAs (a sandbox that keeps content)."""
    bodies = []
    with sqlite3.connect(sandbox_state) as db:
        for (content,) in db.execute("SELECT content FROM documents WHERE is_signature = 0"):
            for text in etree.fromstring(content).iter("{urn:hl7-org:v3}text"):
                if text.get("representation") == "B64":
                    bodies.append(base64.b64decode("".join(text.text.split())))
    return bodies


# The decision of each row without a ledger row, as `run --dry-run` shows it (keys escaped, cut at 64 characters).
NO_LEDGER_ROW = {
    ("HALF-VERSION", None): ("ROW_INVALID", "column dmp_document.version: not an integer"),
    ("ESC\\x1b[2J\\x1b]0;x\\x07", None): ("ROW_INVALID", "column dmp_document.document_id: contains a control character"),
    ("D" * 64 + "…", None): ("ROW_INVALID", "column dmp_document.document_id: longer than 64 characters"),
    ("(none)", None): ("ROW_INVALID", "column dmp_document.document_id: empty (a key column)"),
}


def test_a_run_over_every_hostile_row_feeds_the_healthy_documents_once_and_nothing_from_outside(tmp_path, pg_url):
    from connector import config
    from connector.actions import dry_run

    healthy, hostile = hostile_store(tmp_path)
    folder = h.make_folder(tmp_path)
    with h.sandbox(folder, keep_content=True) as sb:
        cfg = configure(tmp_path, sb.url, pg_url)
        assert h.run_cli(cfg, "db", "upgrade").returncode == 0  # a PostgreSQL ledger is made by its operator
        decisions = {(d.document_id, d.version): (d.reason, d.detail) for d in dry_run.decisions(config.load(cfg))}
        first = h.run_cli(cfg)  # a process of its own: it must end by itself (the FIFO hung it, /dev/zero killed it)
        second = h.run_cli(cfg)
    for result in (first, second):  # exit 0: the harness's configuration has no attention skip reasons
        assert result.returncode == 0 and "Traceback" not in result.stderr, (result.returncode, result.stderr[-3000:])
    assert {k: decisions.get(k) for k in NO_LEDGER_ROW} == NO_LEDGER_ROW
    assert len(decisions) == len(healthy) + len(hostile) + 1  # TWICE's two rows are one decision; the NULL key one
    states = h.ledger_states(pg_url)
    assert {did: states.get((did, 1)) for did in hostile} == hostile
    # the dry run decides as the run does (a mime type with parameters was eligible there, then METADATA_INVALID)
    assert {did: decisions[(did, 1)][0] for did, outcome in hostile.items() if outcome} == {
        did: outcome[1] for did, outcome in hostile.items() if outcome}
    fed = {k for k, (state, _) in states.items() if state == "FED"}
    assert healthy <= fed and fed - healthy == {("LONG-SPECIALTY", 1)}
    h.assert_exactly_once(folder, fed)
    sent = sent_pdfs(folder.sandbox_state)
    assert SECRET not in sent and len(sent) == len(fed)
    assert not any(b"S" * 293 in body for body in sent)
