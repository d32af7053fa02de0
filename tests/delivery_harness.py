"""Shared helpers of the delivery tests (crash, faults, bad inputs, multi-instance, lock, replay).

- `Folder`: a test folder (test PKI, a store, a configuration) pointed at a sandbox DMP;
- `synthetic_store`: a SQLite store of N fictitious, eligible documents (small PDFs, 1-5 per patient);
- `connector(...)`: the argv of the real `dmp-connector` CLI in a subprocess.

Run as a script, this module IS that CLI (`connector.cli.main`), optionally without the CDA schematron
(DMP_TEST_NO_SCHEMATRON=1): SaxonC compiles it in ~15 s per process, which a test that starts dozens of
processes cannot afford. The CDA XSD, the ITI-41 XSD, signatures, mTLS and the sandbox's strict checks
still run; the schematron itself is covered by the end-to-end and bad-input tests (in-process).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
SITE_MAIN = "0B0999998"
TEST_INS_OID = "1.2.250.1.213.1.4.10"
PLACEHOLDER_URL = "https://127.0.0.1:1/si-dmp-server/v2/services"


# --- the connector in a subprocess -----------------------------------------------------------------


def connector(*args: str) -> list[str]:
    """argv of `dmp-connector <args>` run through this module (see the module docstring)."""
    return [sys.executable, str(HERE), *args]


def connector_env(crash_at: str | None = None, schematron: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DMP_CONNECTOR_CRASH_AT"}
    if crash_at:
        env["DMP_CONNECTOR_CRASH_AT"] = crash_at
    env["DMP_TEST_NO_SCHEMATRON"] = "0" if schematron else "1"
    return env


def run_cli(cfg: Path, *args: str, crash_at: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`dmp-connector <args> --config cfg` (default: `run`) to its end."""
    return subprocess.run(connector(*(args or ("run",)), "--config", str(cfg)), env=connector_env(crash_at),
                          capture_output=True, text=True, timeout=timeout)


def popen_run(cfg: Path, *, crash_at: str | None = None, log_path: Path | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(connector("run", "--config", str(cfg)), env=connector_env(crash_at),
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()


class Watched:
    """`dmp-connector run` in a subprocess whose own log lines the test reads as they come: the test waits on
    events of the run (its start, its n-th submission), never on the clock. Lines are copied to `log_path`."""

    STARTED = re.compile(r"connector\.run: run \d+ started")
    SUBMISSION = re.compile(r"connector\.deliver: submission \S+ \(\d+ documents\): ")  # one per ITI-41 answer

    def __init__(self, cfg: Path, log_path: Path, *, crash_at: str | None = None):
        self.log = open(log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(connector("run", "--config", str(cfg)), env=connector_env(crash_at),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(self, pattern: re.Pattern, count: int = 1) -> bool:
        """Read the run's output until the `count`-th line matching `pattern`; False if the run ended first."""
        seen = 0
        for line in self.proc.stdout:
            self.log.write(line)
            seen += bool(pattern.search(line))
            if seen >= count:
                self.log.flush()
                return True
        return False

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = 120) -> int:
        """Drain the output (the run must never block on a full pipe) and wait for the process."""
        for line in self.proc.stdout:
            self.log.write(line)
        self.log.close()
        return self.proc.wait(timeout=timeout)


def run_until_done(cfg: Path, *, max_runs: int = 10) -> list[subprocess.CompletedProcess]:
    """Rerun (no crash) until a run exits 0 and leaves nothing open (no SUBMITTING, no due DEFERRED)."""
    results = []
    for _ in range(max_runs):
        result = run_cli(cfg)
        results.append(result)
        assert result.returncode == 0, f"run exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
        if not open_work(ledger_url(cfg)):
            return results
    raise AssertionError(f"still open work after {max_runs} runs: {open_work(ledger_url(cfg))}")


# --- folders and configuration ---------------------------------------------------------------------


@dataclass
class Folder:
    path: Path
    cfg: Path

    @property
    def store_db(self) -> Path:
        return self.path / "store" / "store.sqlite3"

    @property
    def sandbox_state(self) -> Path:
        return self.path / "sandbox.sqlite3"

    @property
    def ledger_url(self) -> str:
        return ledger_url(self.cfg)

    def configure(self, base_url: str, *, path: Path | None = None, **tables: dict | None) -> Path:
        """(Re)write the configuration (`cfg`, or `path`) for `base_url` (see `write_config`), with the delivery
        tests' defaults: short in-run waits, the schematron in the run's own process (DMP_TEST_NO_SCHEMATRON only
        reaches it). The sample store's SITE_UNKNOWN and TYPE_NOT_ALLOWED documents are deliberate: they do not make
        a run's exit code 1 here."""
        merged = {"dmp.retry": {"in_run_wait_initial": 0.05, "in_run_wait_max": 0.2}, "validation": {"process": False},
                  "monitoring": {"attention_skip_reasons": []}}
        for name, values in tables.items():
            merged[name] = None if values is None else {**merged.get(name, {}), **values}
        return write_config(path or self.cfg, base_url, **merged)


# --- the one way the tests write a configuration ---------------------------------------------------


def write_config(path: Path, base_url: str = PLACEHOLDER_URL, **tables: dict | None) -> Path:
    """Write the product's own configuration (`dmp-connector demo`'s: sample store, test PKI, sandbox) to `path`,
    changed by `tables`: `name={key: value}` replaces or adds those keys of [name] (the table is added if
    missing; a value None removes the key), `name=None` removes the table; "" is the top level. E.g. ledger={"url": ...},
    **{"dmp.retry": {"deferred_min_minutes": 0}, "certificates.sign": None}. Relative paths are read from
    `path`'s folder."""
    from connector.actions import demo

    text = demo.config_text(base_url)
    for name, values in tables.items():
        text = _set_table(text, name, values)
    path.write_text(text, encoding="utf-8")
    return path


# Without the test PKI (commands that neither send nor check certificates): **NO_PKI.
NO_PKI = {"certificates.auth_cli": None, "certificates.sign": None, "dmp": {"ca_bundle": None}}


def _set_table(text: str, name: str, values: dict | None) -> str:
    if name:
        header = f"[{name}]\n"
        if header not in text:
            return text if values is None else text + f"\n{header}" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
        start = text.index(header) + len(header)
    else:
        header, start = "", 0
    end = text.find("\n[", start) + 1 or len(text)
    if values is None:
        return text[:start - len(header)] + text[end:]
    kept = [line for line in text[start:end].splitlines(keepends=True) if line.split("=", 1)[0].strip() not in values]
    given = "".join(f"{k} = {_toml(v)}\n" for k, v in values.items() if v is not None)  # None: the key goes
    return text[:start] + given + "".join(kept) + text[end:]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_folder(directory: Path, *, store: str = "samples", documents: int = 0, seed: int = 1,
                pki_from: Path | None = None) -> Folder:
    """A folder with a test PKI (copied from `pki_from` if given: generating one costs ~1 s), a store
    ("samples": the sample store; "synthetic": `documents` eligible documents) and a placeholder configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    if pki_from is not None and not (directory / "pki").exists():
        shutil.copytree(pki_from, directory / "pki")
    if store == "synthetic":
        synthetic_store(directory / "store", documents, seed=seed)
    from connector.actions import demo

    cfg = demo.prepare_folder(directory, PLACEHOLDER_URL)  # creates the PKI and the sample store if missing
    return Folder(directory, cfg)


def sample_eligible() -> set[tuple[str, int]]:
    from connector import samples

    return {k for k, reason in samples.expected_decisions().items() if reason is None}


# --- a synthetic store -----------------------------------------------------------------------------


def valid_nir(rng: random.Random) -> str:
    from connector import ins

    nir13 = f"{rng.choice('12')}{rng.randint(30, 99):02d}{rng.randint(1, 12):02d}75{rng.randint(101, 120):03d}{rng.randint(1, 999):03d}"
    return f"{nir13}{ins.nir_key(nir13):02d}"


def synthetic_store(directory: Path, n_documents: int, *, seed: int = 1, per_patient: tuple[int, int] = (1, 5),
                    prefix: str = "SYN") -> list[tuple[str, int]]:
    """Write `directory/store.sqlite3` with `n_documents` eligible documents (version 1, small PDFs on disk);
    returns their keys."""
    import sqlalchemy as sa

    from connector.samples import minimal_pdf
    from connector.store import dmp_document, dmp_patient, metadata

    rng = random.Random(seed)
    directory = Path(directory)
    (directory / "documents").mkdir(parents=True, exist_ok=True)
    db = directory / "store.sqlite3"
    db.unlink(missing_ok=True)
    patients, docs, keys = [], [], []
    p = 0
    while len(docs) < n_documents:
        p += 1
        pid = f"{prefix}-P{p:05d}"
        patients.append(patient_row(pid, valid_nir(rng), rng))
        for _ in range(min(rng.randint(*per_patient), n_documents - len(docs))):
            did = f"{prefix}-D{len(docs) + 1:05d}"
            rel = f"documents/{did}.pdf"
            (directory / rel).write_bytes(minimal_pdf([f"Document fictif {did}", "Données de test"]))
            docs.append(document_row(did, pid, content_path=rel, n=len(docs)))
            keys.append((did, 1))
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            # WAL (persistent in the file), as a server database would behave: in the default rollback
            # journal, the run's streaming scan (> yield_per rows) blocks every write-back for the busy
            # timeout (5 s) and the write-back then fails: see the report of the delivery tests.
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        metadata.create_all(engine, tables=[dmp_patient, dmp_document])
        with engine.begin() as conn:
            conn.execute(sa.insert(dmp_patient), patients)
            conn.execute(sa.insert(dmp_document), docs)
    finally:
        engine.dispose()
    return keys


def patient_row(pid: str, matricule: str, rng: random.Random | None = None, **overrides) -> dict:
    sex = "2" if matricule[0] == "2" else "1"
    row = dict(patient_id=pid, ins_matricule=matricule, ins_oid=TEST_INS_OID, identity_status="QUAL",
               birth_family_name="TESTEUR", birth_given_names="CAMILLE ANDRÉ", used_family_name="TESTEUR",
               used_given_name="CAMILLE", sex="F" if sex == "2" else "M", birth_date=dt.date(1980, 1, 15),
               birth_place_code="75101", opposed_to_feeding=False, deceased_at=None)
    row.update(overrides)
    return row


def document_row(did: str, pid: str, *, n: int = 0, **overrides) -> dict:
    created = dt.datetime(2026, 11, 1, 10, 0) + dt.timedelta(minutes=7 * n)
    row = dict(document_id=did, version=1, patient_id=pid, finess_geo=SITE_MAIN, type_code="11490-0",
               title="Lettre de liaison à la sortie", created_at=created, service_start=created - dt.timedelta(days=2),
               service_stop=created - dt.timedelta(hours=3), author_rpps="10001234567", author_family_name="MARTIN",
               author_given_name="Claire", author_specialty_code="G15_10/SM26", legal_authenticator_rpps="10001234567",
               status="VALIDATED", mime_type="application/pdf", content_path=None, content=None,
               mask_professionals=False, invisible_to_patient=False, invisible_to_legal_representatives=False,
               updated_at=created)
    row.update(overrides)
    return row


def folder_sidecar(did: str, pid: str, matricule: str, **overrides) -> dict:
    """The JSON sidecar of a PDF dropped in the intake folder: the store rows `patient_row` and `document_row`
    make, as JSON (ISO dates), without what the folder intake sets itself."""
    from connector.intake.folder import DOCUMENT_KEYS, PATIENT_KEYS

    rows = {**patient_row(pid, matricule), **document_row(did, pid)}
    return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in rows.items()
            if k in PATIENT_KEYS + DOCUMENT_KEYS and v is not None and v is not False} | overrides


# --- the sandbox and the ledger, as the tests read them --------------------------------------------


def sandbox(folder: Folder, **options):
    """An in-process sandbox DMP for `folder` (a context manager: `with sandbox(f) as sb:`)."""
    from connector.sandbox import server

    _warm_sandbox_validators()
    options.setdefault("fast", True)
    return server.serve(pki_dir=folder.path / "pki", state_path=folder.sandbox_state, **options)


def _warm_sandbox_validators() -> None:
    """Compile the sandbox's XML schemas before it serves. They compile lazily, each under its own lock,
    so two first requests compile the ebRS and the SAML schemas at the same time in two threads, and
    libxml2 then fails on the shared xml.xsd import (XMLSchemaParseError on xml:lang -> HTTP 500)."""
    from lxml import etree

    from connector.payload import validate

    validate.xds_request_errors(etree.Element("{urn:ihe:iti:xds-b:2007}ProvideAndRegisterDocumentSetRequest"))
    validate.saml_assertion_errors(etree.Element("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"))


def signal_at_patient(monkeypatch, signum: int, nth: int = 2) -> list:
    """Make the run send itself `signum` when it takes its `nth` patient (mid-run: the first patient's
    submission is already with the senders); returns the list of patients taken, one item each."""
    import threading

    from connector import logs

    original = logs.RunProgress.patient
    patients = []

    def patient_then_signal(self, summary):
        patients.append(1)
        if len(patients) == nth:
            # to the main thread, where Python runs handlers (a process-wide signal may land in another thread
            # and leave the main one asleep); this may be the daemon's job thread: wait for the handler's stop
            signal.pthread_kill(threading.main_thread().ident, signum)
            assert self.stop.wait(60), "the signal handler never ran"
        return original(self, summary)

    monkeypatch.setattr(logs.RunProgress, "patient", patient_then_signal)
    return patients


def ledger_url(cfg: Path) -> str:
    from connector import config

    return config.load(cfg).ledger.url


def ledger_rows(url: str, sql: str, **params) -> list:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def ledger_states(url: str) -> dict[tuple[str, int], tuple[str, str | None]]:
    return {(r.document_id, r.version): (r.state, r.reason)
            for r in ledger_rows(url, "SELECT document_id, version, state, reason FROM documents")}


def open_work(url: str) -> list:
    """Submissions a later run would still pick up: SUBMITTING, or DEFERRED (the tests make them due at once)."""
    return [tuple(r) for r in ledger_rows(url, "SELECT id, state FROM submissions WHERE state IN ('SUBMITTING', 'DEFERRED')")]


def received(folder: Folder) -> dict:
    from connector.sandbox import report

    return report.report(folder.sandbox_state)


def received_uids(folder: Folder) -> list[str]:
    with sqlite3.connect(folder.sandbox_state) as db:
        return [r[0] for r in db.execute("SELECT uid FROM documents WHERE is_signature = 0")]


def assert_exactly_once(folder: Folder, eligible: set[tuple[str, int]]) -> dict:
    """Every eligible document is in the sandbox registry exactly once and FED in the ledger."""
    from connector import config
    from connector.payload import ids

    rep = received(folder)
    assert rep["duplicate_deliveries"] == 0, rep["duplicates"]
    assert rep["same_document_other_uid"] == []
    assert rep["documents"] == rep["distinct_documents"] == len(eligible), (rep["documents"], rep["distinct_documents"], len(eligible))
    oid_root = config.load(folder.cfg).structure.oid_root
    want = {ids.document_unique_id(oid_root, d, v) for d, v in eligible}
    assert set(received_uids(folder)) == want
    states = ledger_states(folder.ledger_url)
    not_fed = {k: states.get(k) for k in eligible if states.get(k, (None,))[0] != "FED"}
    assert not not_fed, f"{len(not_fed)} eligible documents not FED in the ledger: {sorted(not_fed.items())[:5]}"
    return rep


# --- running as the CLI --------------------------------------------------------------------------


def _main() -> None:
    if os.environ.get("DMP_TEST_NO_SCHEMATRON") == "1":
        from connector.payload import validate

        validate.schematron_errors = lambda tree, engine="saxon": []
    from connector.cli import main

    main(prog_name="dmp-connector")


if __name__ == "__main__":
    _main()
