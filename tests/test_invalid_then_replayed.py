"""Inside a real run (the ANS schematron in-process, a strict sandbox): a CDA that fails only the schematron is
FAILED `CDA_INVALID`, a request that fails its own self-check FAILED `METADATA_INVALID`, neither is sent; once
the store is corrected, `replay` evaluates them afresh and feeds each once."""

from __future__ import annotations

import sqlite3

from click.testing import CliRunner
from lxml import etree

import delivery_harness as h
from connector import config
from connector.actions import run as run_action
from connector.cli import main
from connector.payload import cda, ids, validate
from connector.store import Store


def _schematron_only_invalid_cda(settings, store_dir, document_id: str) -> tuple[bytes, bytes]:
    """The product's own CDA of this store document, and the same without its realmCode: valid for the CDA XSD,
    refused by the schematron alone."""
    store = Store(f"sqlite:///{store_dir / 'store.sqlite3'}", store_dir)
    candidate = store.get(document_id, 1)
    store.engine.dispose()
    document, patient = candidate.document, candidate.patient
    unique_id = ids.document_unique_id(settings.structure.oid_root, document_id, 1)
    good = cda.build_cda(document, patient, settings.structure.site(document.finess_geo), settings.structure,
                         store.content(document), unique_id=unique_id)
    tree = etree.fromstring(good)
    tree.remove(tree.find("{urn:hl7-org:v3}realmCode"))
    bad = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    errors = validate.cda_errors(bad)
    assert errors and all(e.startswith("schematron ") for e in errors), errors
    return good, bad


def test_schematron_and_self_check_failures_are_failed_unsent_then_replayed_once(tmp_path, pki):
    store_dir = tmp_path / "store"
    keys = h.synthetic_store(store_dir, 3, seed=12, per_patient=(1, 1))
    (cda_doc, _), (meta_doc, _), _ = sorted(keys)
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder, fast=False) as sb:  # the sandbox checks every CDA with the schematron too
        settings = config.load(folder.configure(sb.url))
        good, bad = _schematron_only_invalid_cda(settings, store_dir, cda_doc)
        (store_dir / "documents" / f"{cda_doc}.xml").write_bytes(bad)
        with sqlite3.connect(folder.store_db) as db:
            db.execute("UPDATE dmp_document SET mime_type = 'text/xml', content_path = ? WHERE document_id = ?",
                       (f"documents/{cda_doc}.xml", cda_doc))
            # a stop before the start: the CDA passes, the XDS request's own check refuses it
            stop = db.execute("SELECT service_stop FROM dmp_document WHERE document_id = ?", (meta_doc,)).fetchone()[0]
            db.execute("UPDATE dmp_document SET service_stop = '2020-01-01 00:00:00.000000' WHERE document_id = ?",
                       (meta_doc,))

        summary = run_action.run(settings)
        states = h.ledger_states(folder.ledger_url)
        assert states[(cda_doc, 1)] == ("FAILED", "CDA_INVALID")
        assert states[(meta_doc, 1)] == ("FAILED", "METADATA_INVALID")
        detail = h.ledger_rows(folder.ledger_url, "SELECT detail FROM documents WHERE document_id = :d", d=cda_doc)[0].detail
        assert "schematron" in detail and "realmCode" in detail
        assert summary.counts["fed"] == 1 and summary.counts["failed"] == 2
        assert h.received(folder)["documents"] == 1 and h.received(folder)["rejected"] == 0  # nothing invalid sent
        assert not h.ledger_rows(folder.ledger_url, "SELECT id FROM submissions WHERE patient_id IN "
                                                    "(SELECT patient_id FROM documents WHERE state = 'FAILED')")

        # corrected in the store; replay evaluates them afresh (they were never part of a submission set)
        (store_dir / "documents" / f"{cda_doc}.xml").write_bytes(good)
        with sqlite3.connect(folder.store_db) as db:
            db.execute("UPDATE dmp_document SET service_stop = ? WHERE document_id = ?", (stop, meta_doc))
        out = CliRunner().invoke(main, ["replay", "--config", str(folder.cfg)])
        assert out.exit_code == 0, out.output
        assert f"{cda_doc} v1: FED" in out.output and f"{meta_doc} v1: FED" in out.output
        again = CliRunner().invoke(main, ["replay", "--config", str(folder.cfg)])
        assert "0 document(s) requeued" in again.output
    h.assert_exactly_once(folder, set(keys))
    assert h.received(folder)["rejected"] == 0
