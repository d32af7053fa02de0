"""Issue 19 end to end: the guide's example messages, as test fixtures derived from them (their CDA corrected for
today's ANS schematron, PID-32 QUAL), sent over a real MLLP socket to the intake, then fed to the sandbox DMP by
real runs: initial -> fed, replacement -> replaces its DMP entry, deletion -> withdrawn. And the examples' CDAs as
published, refused CDA_INVALID with the schematron's own message, by the run and by `run --dry-run` alike."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from connector.samples import minimal_pdf
from delivery_harness import connector, connector_env, folder_sidecar, ledger_rows, make_folder, sandbox
from hl7_client import (MDM_DEL, MDM_INIT, MDM_RPLC, ORU_DEL, ORU_INIT, ORU_RPLC, RunningListener, corrected_cda, err,
                        example, example_cda, msa, qualified, send, with_cda)
from connector.config import IntakeHl7Settings

INTAKE = IntakeHl7Settings(port=0, read_timeout=20, idle_timeout=60)
MDM_DOC = "1.2.250.1.71.4.2.2.120456789.71024000080"  # the corrected CDAs' setId: the store's document id
MDM_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"  # the initial CDA's own id (TXA-12): its uniqueId
MDM_V2 = "1.2.250.1.71.4.2.2.120456789.71024000082"  # the replacement CDA's own id
ORU_DOC = ORU_ID = "1.2.250.1.213.1.1.9"  # the ORU initial CDA's id and setId
ORU_V2 = "1.2.250.1.213.1.1.13"  # the ORU replacement CDA's own id
# The FINESS géographique of the examples' PRT (their CDAs have no healthCareFacility id): MDM's, ORU's (PRT-8.10
# 1120459876, the ANS structure id: "1" + FINESS).
SITE = """
[[structure.sites]]
finess_geo = "300017985"
name = "Organisation-Y"
healthcare_facility_type = "SA07"
practice_setting = "AMBULATOIRE"

[[structure.sites]]
finess_geo = "120459876"
name = "labo"
healthcare_facility_type = "SA07"
practice_setting = "AMBULATOIRE"
"""


@pytest.fixture
def intake(tmp_path):
    """(listener address, the connector's folder) over one store the intake writes and the runs read."""
    store_url = f"sqlite:///{tmp_path / 'intake-store.sqlite3'}"
    running = RunningListener(INTAKE, store_url)
    folder = make_folder(tmp_path / "connector")
    try:
        yield running.address, folder, store_url
    finally:
        running.stop()


def _configure(folder, url: str, store_url: str):
    cfg = folder.configure(url, store={"url": store_url},
                           validation={"schematron": "every"})  # the ANS schematron decides every CDA here
    cfg.write_text(cfg.read_text(encoding="utf-8") + SITE, encoding="utf-8")  # the examples' site
    return cfg


def run_cli(cfg, *args: str) -> subprocess.CompletedProcess:
    """`dmp-connector run <args>`, the ANS schematron on (the delivery tests' `run_cli` turns it off)."""
    return subprocess.run(connector("run", *args, "--config", str(cfg)), env=connector_env(schematron=True),
                          capture_output=True, text=True, timeout=600)


def _ledger(folder) -> dict:
    return {(r.document_id, r.version): (r.state, r.reason, r.dmp_status)
            for r in ledger_rows(folder.ledger_url, "SELECT document_id, version, state, reason, dmp_status FROM documents")}


def _entries(folder) -> list[tuple]:
    from connector.sandbox.state import SandboxState

    sandbox_state = SandboxState(folder.sandbox_state)
    try:
        return [(r["uid"], r["status"].rsplit(":", 1)[-1]) for r in sandbox_state.query(
            "SELECT uid, status FROM documents WHERE is_signature = 0 AND duplicate = 0 ORDER BY id")]
    finally:
        sandbox_state.close()


# (initial, replacement, deletion messages; the store's document id; the initial's and the replacement's CDA ids)
CHAINS = {"MDM": (MDM_INIT, MDM_RPLC, MDM_DEL, MDM_DOC, MDM_ID, MDM_V2),
          "ORU": (ORU_INIT, ORU_RPLC, ORU_DEL, ORU_DOC, ORU_ID, ORU_V2)}


@pytest.mark.parametrize("kind", CHAINS)
def test_examples_go_end_to_end_initial_replacement_deletion(intake, kind):
    init, rplc, delete, doc, v1, v2 = CHAINS[kind]
    address, folder, store_url = intake
    with sandbox(folder) as dmp:
        cfg = _configure(folder, dmp.url, store_url)

        assert msa(send(address, qualified(init))) == ["AA", "015"]
        dry = run_cli(cfg, "--dry-run", "--format", "json")
        assert [(r["document_id"], r["decision"]) for r in json.loads(dry.stdout)] == [(doc, "eligible")]
        first = run_cli(cfg)
        assert first.returncode == 0, first.stdout + first.stderr
        assert _ledger(folder) == {(doc, 1): ("FED", None, "Approved")}
        assert _entries(folder) == [(v1, "Approved")]  # its uniqueId is the CDA's own id

        assert msa(send(address, qualified(rplc))) == ["AA", "015"]
        second = run_cli(cfg)
        assert second.returncode == 0, second.stdout + second.stderr
        assert _ledger(folder) == {(doc, 1): ("FED", None, "Deprecated"), (doc, 2): ("FED", None, "Approved")}
        assert _entries(folder) == [(v1, "Deprecated"), (v2, "Approved")]

        assert msa(send(address, qualified(delete))) == ["AA", "015"]
        third = run_cli(cfg)
        assert third.returncode == 0, third.stdout + third.stderr
        assert _ledger(folder)[(doc, 2)] == ("FED", "WITHDRAWN", "Deleted")
        assert _entries(folder) == [(v1, "Deprecated"), (v2, "Deleted")]


def test_example_cdas_as_published_fail_cda_invalid_with_the_schematrons_message(intake):
    """PID-32 QUAL, but the CDA as the guide ships it: no setId, a family name of qualifier SP. The run refuses it
    CDA_INVALID quoting the schematron, and the dry run says the same before."""
    address, folder, store_url = intake
    message = example(MDM_INIT).replace(b"|N|VALI", b"|N|QUAL")
    assert msa(send(address, message)) == ["AA", "015"]
    cfg = _configure(folder, "https://127.0.0.1:1/si-dmp-server/v2/services", store_url)  # nothing is sent
    dry = run_cli(cfg, "--dry-run", "--format", "json")
    [row] = json.loads(dry.stdout)
    assert (row["decision"], row["reason"]) == ("fails", "CDA_INVALID")
    for expected in ("hl7:setId[not(@nullFlavor)] is mandatory", 'Seuls les qualifiers "BR"'):
        assert expected in row["detail"]
    result = run_cli(cfg)
    assert result.returncode == 1, result.stdout + result.stderr
    [failed] = ledger_rows(folder.ledger_url, "SELECT state, reason, detail FROM documents")
    assert (failed.state, failed.reason) == ("FAILED", "CDA_INVALID") and failed.detail == row["detail"]


def test_oru_replacement_as_published_fails_cda_invalid_in_the_run_and_the_dry_run(intake):
    """The ORU replacement as published (CDA corrected, PID-32 QUAL, not chained) names …12 in its relatedDocument,
    an id never sent: the intake takes it (its setId finds the document; the ACK is technical), the run refuses it
    CDA_INVALID naming the replaced version's id, and the dry run says the same before; the DMP keeps version 1."""
    address, folder, store_url = intake
    with sandbox(folder) as dmp:
        cfg = _configure(folder, dmp.url, store_url)
        assert msa(send(address, qualified(ORU_INIT))) == ["AA", "015"]
        assert run_cli(cfg).returncode == 0
        unchained = with_cda(example(ORU_RPLC), corrected_cda).replace(b"|N|VALI", b"|N|QUAL")
        assert msa(send(address, unchained)) == ["AA", "015"]
        dry = run_cli(cfg, "--dry-run", "--format", "json")
        [row] = [r for r in json.loads(dry.stdout) if r["version"] == 2]
        assert (row["decision"], row["reason"]) == ("fails", "CDA_INVALID")
        assert f"relatedDocument typeCode=RPLC whose parentDocument id is root={ORU_ID}" in row["detail"]
        result = run_cli(cfg)
        assert result.returncode == 1, result.stdout + result.stderr
        assert _ledger(folder)[(ORU_DOC, 2)][:2] == ("FAILED", "CDA_INVALID")
        assert _entries(folder) == [(ORU_ID, "Approved")]


def test_drop_folder_documents_go_end_to_end(tmp_path):
    """`intake folder --once`: a CDA (the MDM example's, corrected; its FINESS, which it lacks, in a sidecar) and
    a PDF with its sidecar, into the store; `run` feeds both to the sandbox."""
    drop = tmp_path / "drop"
    drop.mkdir()
    store_url = f"sqlite:///{tmp_path / 'intake-store.sqlite3'}"
    folder = make_folder(tmp_path / "connector")
    (drop / "cr.json").write_text(json.dumps({"finess_geo": "300017985"}))  # the MDM PRT's
    (drop / "cr.xml").write_bytes(corrected_cda(example_cda(MDM_INIT)))
    (drop / "lettre.json").write_text(json.dumps(folder_sidecar("PDF-1", "IPP-1", "180017510101101")))
    (drop / "lettre.pdf").write_bytes(minimal_pdf(["Document fictif", "Données de test"]))
    with sandbox(folder) as dmp:
        cfg = _configure(folder, dmp.url, store_url)
        cfg.write_text(cfg.read_text(encoding="utf-8") + f'\n[intake.folder]\npath = "{drop}"\n', encoding="utf-8")
        taken = subprocess.run(connector("intake", "folder", "--once", "--config", str(cfg)), env=connector_env(),
                               capture_output=True, text=True, timeout=120)
        assert taken.returncode == 0 and "2 taken, 0 not taken" in taken.stdout, taken.stdout + taken.stderr
        assert sorted(os.listdir(drop / "done")) == ["cr.json", "cr.xml", "lettre.json", "lettre.pdf"]
        result = run_cli(cfg)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _ledger(folder) == {(MDM_DOC, 1): ("FED", None, "Approved"), ("PDF-1", 1): ("FED", None, "Approved")}
        assert [uid for uid, _ in _entries(folder)][:1] == [MDM_ID]  # the CDA's own id is its uniqueId
