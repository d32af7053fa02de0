"""`dmp-connector intake folder` (issue 19 item 4): a drop folder of CDAs and of PDFs with their JSON sidecar,
committed to the store then moved to done/ (or rejected/ with a .reason); only complete files are taken (the
rename convention); a kill between commit and move records the document once; hostile entries are rejected one
by one, the sweep goes on."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import time

import pytest
import sqlalchemy as sa

from click.testing import CliRunner

from connector import config
from connector.cli import main
from connector.config import IntakeFolderSettings
from connector.ledger.repo import open_ledger
from connector.intake import figures
from connector.intake.folder import DOCUMENT_KEYS, Folder
from connector.intake.writer import Writer
from connector.samples import minimal_pdf
from delivery_harness import ledger_rows as rows
from delivery_harness import NO_PKI, SITE_MAIN, connector, connector_env, folder_sidecar, write_config
from hl7_client import MDM_INIT, corrected_cda, example_cda

CDA = corrected_cda(example_cda(MDM_INIT))  # a CI-SIS CDA without healthCareFacility id (its FINESS in a sidecar)
CDA_DOC = "1.2.250.1.71.4.2.2.120456789.71024000080"  # its setId: the store's document id
CDA_INS = "279035121518989"
PDF_INS = "180017510101101"
PDF_SIDECAR = folder_sidecar("PDF-1", "IPP-1", PDF_INS, invisible_to_patient=True)


@pytest.fixture
def drop(tmp_path):
    """(the drop folder, its Folder over a SQLite store, the store URL)."""
    path = tmp_path / "drop"
    path.mkdir()
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    writer = Writer(url)
    writer.create_tables()
    folder = Folder(IntakeFolderSettings(path=path, max_file_bytes=1024 * 1024), writer,
                    figures.Recorder(writer.engine, "folder:test"))
    folder.prepare()
    yield path, folder, url
    writer.engine.dispose()


def listing(path) -> dict:
    return {sub: sorted(os.listdir(path / sub)) for sub in ("", "done", "rejected")}


def outcomes(folder) -> list[tuple[str, str]]:
    return [(o.name, o.outcome) for o in folder.sweep()]


def reason(path, name: str) -> str:
    return (path / "rejected" / f"{name}.reason").read_text(encoding="utf-8")


def test_a_cda_and_a_pdf_with_sidecars_are_committed_then_moved_to_done(drop):
    path, folder, url = drop
    (path / "cr.json").write_text(json.dumps({"finess_geo": SITE_MAIN, "mask_professionals": True}))
    (path / "cr.xml").write_bytes(CDA)
    (path / "lettre.json").write_text(json.dumps(dict(PDF_SIDECAR, created_at="2026-11-01T09:00:00+00:00")))
    (path / "lettre.pdf").write_bytes(minimal_pdf(["Document fictif"]))

    assert outcomes(folder) == [("cr.xml", "accepted"), ("lettre.pdf", "accepted")]
    # a time with an offset is stored as the store's local time (Europe/Paris)
    assert rows(url, "SELECT created_at FROM dmp_document WHERE document_id = 'PDF-1'") == [("2026-11-01 10:00:00.000000",)]
    assert listing(path) == {"": ["done", "rejected"], "done": ["cr.json", "cr.xml", "lettre.json", "lettre.pdf"],
                             "rejected": []}
    assert rows(url, "SELECT document_id, version, patient_id, finess_geo, mime_type, status, mask_professionals, "
                     "invisible_to_patient, length(content) FROM dmp_document ORDER BY document_id") == [
        (CDA_DOC, 1, "INS-9ad46c4a164cd3f3d4db622b", SITE_MAIN, "text/xml", "VALIDATED", 1, 0, len(CDA)),
        ("PDF-1", 1, "IPP-1", SITE_MAIN, "application/pdf", "VALIDATED", 0, 1,
         (path / "done" / "lettre.pdf").stat().st_size)]
    # the CDA's patient, read from its recordTarget as the run compares it; QUAL: it carries an INS
    assert rows(url, "SELECT ins_matricule, identity_status, birth_family_name, sex, birth_date FROM dmp_patient "
                     "ORDER BY patient_id") == [(CDA_INS, "QUAL", "PAT-TROIS", "F", "1979-03-28"),
                                                (PDF_INS, "QUAL", "TESTEUR", "M", "1980-01-15")]
    assert outcomes(folder) == []  # nothing left
    folder.recorder.flush()
    assert figures.collect(url)["folder"]["total"]["accepted"] == 2


def test_a_pdf_whose_sidecar_names_a_known_patient_by_id_alone_is_taken(drop):
    """A second document of a patient the store knows: its sidecar gives the patient's id, none of its traits
    (it was an empty UPDATE, a syntax error read as "store unavailable": the file stayed, retried forever)."""
    path, folder, url = drop
    (path / "a.json").write_text(json.dumps(PDF_SIDECAR))
    (path / "a.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    assert outcomes(folder) == [("a.pdf", "accepted")]
    document_only = {k: v for k, v in PDF_SIDECAR.items() if k in DOCUMENT_KEYS or k == "patient_id"}
    (path / "b.json").write_text(json.dumps(dict(document_only, document_id="PDF-2")))
    (path / "b.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    assert outcomes(folder) == [("b.pdf", "accepted")]
    assert rows(url, "SELECT document_id, patient_id FROM dmp_document ORDER BY document_id") == [
        ("PDF-1", "IPP-1"), ("PDF-2", "IPP-1")]
    assert rows(url, "SELECT ins_matricule, birth_family_name FROM dmp_patient") == [(PDF_INS, "TESTEUR")]


def test_partial_files_are_left_until_complete_then_taken_once(drop):
    path, folder, url = drop
    (path / "a.xml.part").write_bytes(CDA[:500])  # being written
    (path / ".b.xml").write_bytes(CDA)  # a hidden name: being written too
    (path / "c.json").write_text(json.dumps(PDF_SIDECAR))  # a sidecar, its PDF still coming
    (path / "d.pdf").write_bytes(minimal_pdf(["Document fictif"]))  # a PDF, its sidecar still coming
    assert outcomes(folder) == []
    assert listing(path)[""] == [".b.xml", "a.xml.part", "c.json", "d.pdf", "done", "rejected"]
    assert rows(url, "SELECT count(*) FROM dmp_document") == [(0,)]

    (path / "a.json.part").write_text(json.dumps({"finess_geo": SITE_MAIN}))
    os.rename(path / "a.json.part", path / "a.json")  # the sidecar first: alone, it waits for its document
    assert outcomes(folder) == []
    (path / "a.xml.part").write_bytes(CDA)
    os.rename(path / "a.xml.part", path / "a.xml")  # the document last: the set is complete
    (path / "c.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    (path / "d.json").write_text(json.dumps(dict(PDF_SIDECAR, document_id="PDF-2")))
    assert outcomes(folder) == [("a.xml", "accepted"), ("c.pdf", "accepted"), ("d.pdf", "accepted")]
    assert listing(path) == {"": [".b.xml", "done", "rejected"], "done": [
        "a.json", "a.xml", "c.json", "c.pdf", "d.json", "d.pdf"], "rejected": []}
    assert rows(url, "SELECT document_id FROM dmp_document ORDER BY document_id") == [(CDA_DOC,), ("PDF-1",),
                                                                                    ("PDF-2",)]
    assert outcomes(folder) == []


def test_an_orphan_half_waits_then_is_rejected(drop):
    path, folder, _ = drop
    (path / "p.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    (path / "s.json").write_text(json.dumps(PDF_SIDECAR))
    assert outcomes(folder) == []
    later = os.stat(path / "p.pdf").st_mtime + 3601
    folder.clock = lambda: later  # an hour later (orphan_minutes 60)
    assert outcomes(folder) == [("p.pdf", "INCOMPLETE"), ("s.json", "INCOMPLETE")]
    assert reason(path, "p.pdf").startswith("INCOMPLETE: a PDF without its sidecar .json for over")
    assert reason(path, "s.json").startswith("INCOMPLETE: a sidecar without its document")


def test_hostile_entries_are_each_rejected_with_a_reason_and_the_sweep_goes_on(drop, tmp_path, caplog):
    path, folder, url = drop
    outside = tmp_path / "outside.xml"
    outside.write_bytes(CDA)
    (path / "01-link.xml").symlink_to(outside)
    (path / "02-dir.xml").mkdir()
    os.mkfifo(path / "03-fifo.xml")
    (path / "04-huge.xml").write_bytes(b"<a>" + b" " * (1024 * 1024) + b"</a>")
    (path / "05-notxml.xml").write_bytes(b"%PDF-1.4 not a CDA")
    (path / "06-notpdf.pdf").write_bytes(CDA)
    (path / "06-notpdf.json").write_text(json.dumps(PDF_SIDECAR))
    (path / "07-badjson.xml").write_bytes(CDA)
    (path / "07-badjson.json").write_text("{not json")
    (path / "08-unknown.xml").write_bytes(CDA)
    (path / "08-unknown.json").write_text(json.dumps({"finess_geo": SITE_MAIN, "nir": "x"}))
    (path / "09-contradiction.xml").write_bytes(CDA)
    (path / "09-contradiction.json").write_text(json.dumps({"finess_geo": SITE_MAIN, "ins_matricule": PDF_INS}))
    (path / "10-bomb.xml").write_bytes(b'<!DOCTYPE a [<!ENTITY b "c">]><a>&b;</a>')
    (path / "11-types.pdf").write_bytes(minimal_pdf(["x"]))
    (path / "11-types.json").write_text(json.dumps(dict(PDF_SIDECAR, version="2")))
    (path / "12-notes.txt").write_text("hello")
    (path / "13-ok.xml").write_bytes(CDA)
    (path / "13-ok.json").write_text(json.dumps({"finess_geo": SITE_MAIN}))
    (path / "14-ok.pdf").write_bytes(minimal_pdf(["x"]))
    (path / "14-ok.json").write_text(json.dumps(PDF_SIDECAR))
    with caplog.at_level(logging.WARNING, logger="connector.intake"):
        found = outcomes(folder)
    assert found == [("01-link.xml", "SYMLINK"), ("02-dir.xml", "NOT_A_FILE"), ("03-fifo.xml", "NOT_A_FILE"),
                     ("04-huge.xml", "TOO_LARGE"), ("05-notxml.xml", "NOT_A_CDA"), ("06-notpdf.pdf", "NOT_A_PDF"),
                     ("07-badjson.xml", "SIDECAR_INVALID"), ("08-unknown.xml", "SIDECAR_INVALID"),
                     ("09-contradiction.xml", "CONTRADICTION"), ("10-bomb.xml", "NOT_A_CDA"),
                     ("11-types.pdf", "SIDECAR_INVALID"), ("12-notes.txt", "NOT_A_DOCUMENT"),
                     ("13-ok.xml", "accepted"), ("14-ok.pdf", "accepted")]
    assert listing(path)[""] == ["done", "rejected"]
    assert outside.read_bytes() == CDA  # the link's target was neither read nor moved
    assert (path / "rejected" / "01-link.xml").is_symlink()
    assert "ins_matricule differs from the CDA's" in reason(path, "09-contradiction.xml")
    assert "nir" in reason(path, "08-unknown.xml") and "version" in reason(path, "11-types.pdf")
    for name, code in found[:12]:
        text = reason(path, name)
        assert text.startswith(f"{code}: ") and text.count("\n") == 1
        assert CDA_INS not in text and PDF_INS not in text and "PAT-TROIS" not in text
        assert any(name in r.getMessage() and code in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert not any(ins in caplog.text for ins in (CDA_INS, PDF_INS))
    assert rows(url, "SELECT count(*) FROM dmp_document") == [(2,)]
    folder.recorder.flush()
    total = figures.collect(url)["folder"]["total"]
    assert (total["accepted"], total["refused"], total["refused_by_code"]["SIDECAR_INVALID"]) == (2, 12, 3)


def test_a_file_vanishing_is_left_to_the_next_sweep_and_an_unreadable_one_rejected(drop, monkeypatch):
    path, folder, url = drop
    (path / "gone.xml").write_bytes(CDA)
    (path / "locked.xml").write_bytes(CDA)
    read, real_open = Folder._read, os.open

    def racing(self, entry):
        if entry.name == "gone.xml":
            os.unlink(entry.path)  # removed by someone between the listing and the read
        return read(self, entry)

    def denied(file, flags, *args, **kwargs):  # root reads any file: the permission error is simulated
        if str(file).endswith("locked.xml"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(Folder, "_read", racing)
    monkeypatch.setattr(os, "open", denied)
    assert outcomes(folder) == [("gone.xml", "vanished"), ("locked.xml", "UNREADABLE")]
    assert reason(path, "locked.xml") == "UNREADABLE: locked.xml cannot be opened: Permission denied\n"
    assert listing(path)[""] == ["done", "rejected"]
    assert rows(url, "SELECT count(*) FROM dmp_document") == [(0,)]


def test_a_document_version_received_again_is_recorded_once_and_a_changed_one_refused(drop):
    path, folder, url = drop
    (path / "a.json").write_text(json.dumps(PDF_SIDECAR))
    (path / "a.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    assert outcomes(folder) == [("a.pdf", "accepted")]
    (path / "a.json").write_text(json.dumps(PDF_SIDECAR))  # the same document sent again, same name
    (path / "a.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    (path / "b.json").write_text(json.dumps(PDF_SIDECAR))  # the same version, another content
    (path / "b.pdf").write_bytes(minimal_pdf(["Autre document fictif"]))
    (path / "c.json").write_text(json.dumps(dict(PDF_SIDECAR, version=2)))  # its next version
    (path / "c.pdf").write_bytes(minimal_pdf(["Document fictif v2"]))
    (path / "d.json").write_text(json.dumps(dict(PDF_SIDECAR, version=4)))  # version 3 never received
    (path / "d.pdf").write_bytes(minimal_pdf(["Document fictif v4"]))
    assert outcomes(folder) == [("a.pdf", "resend"), ("b.pdf", "REFUSED_BY_STORE"), ("c.pdf", "accepted"),
                                ("d.pdf", "REFUSED_BY_STORE")]
    assert listing(path)["done"] == ["a.json", "a.json.1", "a.pdf", "a.pdf.1", "c.json", "c.pdf"]
    assert rows(url, "SELECT document_id, version FROM dmp_document ORDER BY version") == [("PDF-1", 1), ("PDF-1", 2)]
    assert "another content" in reason(path, "b.pdf") and "never received" in reason(path, "d.pdf")


def test_cli_once_and_a_kill_between_commit_and_move(tmp_path):
    """`intake folder --once` killed (SIGKILL) right after its commit: the file is still there; the next sweep
    finds the document already recorded, records it once and moves it."""
    path = tmp_path / "drop"
    path.mkdir()
    store = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    cfg = write_config(tmp_path / "c.toml", store={"url": store}, **NO_PKI,
                       **{"": {"state_dir": str(tmp_path / "state")}, "intake.folder": {"path": str(path)}})
    (path / "a.json").write_text(json.dumps(PDF_SIDECAR))
    (path / "a.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    (path / "z.xml").write_bytes(b"not xml")

    def once(crash_at=None):
        return subprocess.run(connector("intake", "folder", "--once", "--config", str(cfg)),
                              env=connector_env(crash_at), capture_output=True, text=True, timeout=120)

    killed = once("intake_folder_after_commit")
    assert killed.returncode == -9
    assert sorted(os.listdir(path)) == ["a.json", "a.pdf", "done", "rejected", "z.xml"]
    assert rows(store, "SELECT document_id, version FROM dmp_document") == [("PDF-1", 1)]
    again = once()
    assert again.returncode == 1, again.stdout + again.stderr  # z.xml rejected
    assert "1 taken, 1 not taken" in again.stdout and "z.xml: NOT_A_CDA" in again.stdout
    assert "already recorded" in again.stderr
    assert rows(store, "SELECT document_id, version FROM dmp_document") == [("PDF-1", 1)]
    assert sorted(os.listdir(path / "done")) == ["a.json", "a.pdf"]
    assert once().returncode == 0
    open_ledger(config.load(cfg).ledger.url).engine.dispose()  # status reads a ledger (no run needed here)
    folder = json.loads(CliRunner().invoke(main, ["status", "--format", "json", "--config", str(cfg)]).output)[
        "intake"]["folder"]
    assert (folder["total"]["resends"], folder["total"]["refused_by_code"]) == (1, {"NOT_A_CDA": 1})


def test_cli_refuses_a_missing_folder(tmp_path):
    cfg = write_config(tmp_path / "c.toml", **NO_PKI,
                       **{"intake.folder": {"path": str(tmp_path / "nowhere")}})
    result = subprocess.run(connector("intake", "folder", "--once", "--config", str(cfg)), env=connector_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "intake.folder.path" in result.stderr


def test_status_check_and_prometheus_show_the_folder_intake(drop, tmp_path):
    path, folder, url = drop
    cfg = write_config(tmp_path / "c.toml", store={"url": url}, **NO_PKI,
                       **{"": {"state_dir": str(tmp_path / "state")}})
    open_ledger(config.load(cfg).ledger.url).engine.dispose()
    (path / "notes.txt").write_text("x")
    (path / "a.json").write_text(json.dumps(PDF_SIDECAR))
    (path / "a.pdf").write_bytes(minimal_pdf(["Document fictif"]))
    assert outcomes(folder) == [("a.pdf", "accepted"), ("notes.txt", "NOT_A_DOCUMENT")]
    folder.recorder.flush(heartbeat=False)  # as `--once` does: figures, no watcher
    long_ago = figures.utcnow() - dt.timedelta(minutes=30)
    figures.Recorder(folder.writer.engine, "folder:host:/srv/drop", clock=lambda: long_ago).start()  # then killed

    def status(*args):
        return CliRunner().invoke(main, ["status", *args, "--config", str(cfg)])

    text = status().output
    assert "Folder intake:" in text and "HL7 intake:" not in text
    assert "watcher host:/srv/drop  running, last seen" in text
    assert "this hour       2 files: 1 accepted, 0 resends, 1 refused (NOT_A_DOCUMENT 1)" in text
    assert "<h2>Folder intake</h2>" in status("--format", "html").output
    assert "intake_folder,total,refused:NOT_A_DOCUMENT,1" in status("--format", "csv").output
    check = status("--check")
    assert check.exit_code == 2 and "CRITICAL: folder intake watcher host:/srv/drop down: not seen for 30 minutes" \
        in check.output
    status("--prometheus", str(tmp_path / "m.prom"))
    metrics = (tmp_path / "m.prom").read_text()
    assert 'dmp_connector_intake_folder_files_total{outcome="NOT_A_DOCUMENT"} 1' in metrics
    assert 'dmp_connector_intake_folder_watcher_running{instance="host:/srv/drop"} 1' in metrics
    assert "dmp_connector_intake_messages_total" in metrics  # the HL7 intake's figures stay apart: none
    assert 'dmp_connector_intake_messages_total{outcome="accepted"} 0' in metrics


def test_the_watcher_takes_files_as_they_come_and_stops_cleanly_on_sigterm(tmp_path):
    path = tmp_path / "drop"
    path.mkdir()
    store = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    cfg = write_config(tmp_path / "c.toml", store={"url": store}, **NO_PKI, **{"intake.folder": {
        "path": str(path), "poll_seconds": 0.2, "figures_interval_seconds": 0.2}})
    watcher = subprocess.Popen(connector("intake", "folder", "--config", str(cfg)), env=connector_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (path / "a.json.part").write_text(json.dumps(PDF_SIDECAR))
        os.rename(path / "a.json.part", path / "a.json")
        (path / "a.pdf.part").write_bytes(minimal_pdf(["Document fictif"]))
        os.rename(path / "a.pdf.part", path / "a.pdf")
        for _ in range(600):  # until the watcher took it (a bound, not a timed assertion)
            taken = (path / "done" / "a.pdf").exists()
            if watcher.poll() is not None or (taken and rows(store, "SELECT count(*) FROM dmp_intake_figures") != [(0,)]):
                break
            time.sleep(0.1)
        assert watcher.poll() is None and taken, watcher.stderr.read() if watcher.poll() is not None else ""
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(60) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert rows(store, "SELECT document_id FROM dmp_document") == [("PDF-1",)]
    [(instance, stopped)] = rows(store, "SELECT instance, stopped_at FROM dmp_intake_listener")
    assert instance.startswith("folder:") and instance.endswith(str(path)) and stopped is not None
    assert "watching" in watcher.stderr.read()


def test_the_folder_settings_are_read_and_checked(tmp_path):
    cfg = write_config(tmp_path / "c.toml", **NO_PKI, **{"intake.folder": {
        "path": "drop", "poll_seconds": 2, "max_file_bytes": 1000, "orphan_minutes": 5, "figures_interval_seconds": 30}})
    s = config.load(cfg).intake_folder
    assert (s.path, s.poll_seconds, s.max_file_bytes, s.orphan_minutes, s.figures_interval) == (
        tmp_path / "drop", 2, 1000, 5, 30)  # a relative path is the configuration file's directory's
    assert config.load(write_config(tmp_path / "d.toml", **NO_PKI)).intake_folder.path is None
    with pytest.raises(config.ConfigError, match="intake.folder.poll_seconds"):
        config.load(write_config(tmp_path / "e.toml", **NO_PKI, **{"intake.folder": {"poll_seconds": 0}}))


def test_a_postgresql_store(tmp_path, pg_url):
    path = tmp_path / "drop"
    path.mkdir()
    writer = Writer(pg_url)
    writer.create_tables()
    folder = Folder(IntakeFolderSettings(path=path), writer)
    folder.prepare()
    try:
        (path / "cr.json").write_text(json.dumps({"finess_geo": SITE_MAIN, "identity_status": "VALI"}))
        (path / "cr.xml").write_bytes(CDA)
        (path / "lettre.json").write_text(json.dumps(PDF_SIDECAR))
        (path / "lettre.pdf").write_bytes(minimal_pdf(["Document fictif"]))
        assert outcomes(folder) == [("cr.xml", "accepted"), ("lettre.pdf", "accepted")]
        (path / "lettre.json").write_text(json.dumps(PDF_SIDECAR))
        (path / "lettre.pdf").write_bytes(minimal_pdf(["Document fictif"]))
        assert outcomes(folder) == [("lettre.pdf", "resend")]
    finally:
        writer.engine.dispose()
    assert rows(pg_url, "SELECT d.document_id, d.version, p.identity_status, p.birth_date, d.invisible_to_patient "
                        "FROM dmp_document d JOIN dmp_patient p USING (patient_id) ORDER BY d.document_id") == [
        (CDA_DOC, 1, "VALI", dt.date(1979, 3, 28), False), ("PDF-1", 1, "QUAL", dt.date(1980, 1, 15), True)]
