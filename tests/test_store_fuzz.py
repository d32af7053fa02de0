"""A fuzzed store in real runs against the sandbox DMP: every store column filled with random types, lengths,
bytes and NULLs (and content paths that escape the store, FIFOs, NUL bytes), mixed with healthy documents of the
same patients. Every row gets a decision, the healthy documents are fed exactly once, the run never aborts, and
no file outside the content root reaches the DMP. A PostgreSQL ledger: its columns have sizes SQLite ignores."""

import contextlib
import datetime as dt
import os
import random
import sqlite3
import uuid

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings as hsettings, strategies as st

import delivery_harness as h
from connector import config
from connector.actions import dry_run
from connector.actions import run as run_action
from connector.samples import minimal_pdf

PDF = minimal_pdf(["Document fictif"])
SECRET = minimal_pdf(["HORS DU MAGASIN"])  # a valid PDF outside the content root: must never be sent
N_HEALTHY = 4

DOCUMENT_COLUMNS = ["document_id", "version", "patient_id", "finess_geo", "type_code", "title", "created_at",
                    "service_start", "service_stop", "author_rpps", "author_family_name", "author_given_name",
                    "author_specialty_code", "legal_authenticator_rpps", "status", "mime_type", "content_path",
                    "content", "mask_professionals", "invisible_to_patient", "invisible_to_legal_representatives",
                    "updated_at"]
PATIENT_COLUMNS = ["ins_matricule", "ins_oid", "identity_status", "birth_family_name", "birth_given_names",
                   "used_family_name", "used_given_name", "sex", "birth_date", "birth_place_code",
                   "opposed_to_feeding", "deceased_at"]

_special_text = st.sampled_from([
    "", " ", "None", "../outside/secret.pdf", "documents/../../outside/secret.pdf", "/dev/zero", "documents/fifo.pdf",
    "documents/link-out.pdf", "a\x00b", "\x1b[2J\x1b[H", "\u202eevil", "0B0999998" * 3, "1.5", "2.0", "-1",
    "99999999999999999999", "VALIDATED", "QUAL", "application/pdf", "application/pdf; charset=binary", "text/xml",
    "11490-0", "2026-02-30", "2026-11-01 10:00:00", "x" * 300, "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
])
_value = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80), st.text(min_size=200, max_size=400),
    st.binary(max_size=120), _special_text,
    st.sampled_from([PDF, PDF[:-10], b"%PDF-<html></html>%%EOF", b"\xff\xfe\x00", b"<ClinicalDocument/>"]),
)
_broken_document = st.dictionaries(st.sampled_from(DOCUMENT_COLUMNS), _value, min_size=1, max_size=6)
_broken_patient = st.dictionaries(st.sampled_from(PATIENT_COLUMNS), _value, max_size=4)


def _insert(db, table: str, row: dict) -> None:
    db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
               [str(v) if isinstance(v, (dt.date, dt.datetime)) else v for v in row.values()])


def _keyless(db) -> None:
    """Like a DPI's view: no primary key, no type checks (SQLite's loose typing does the rest)."""
    for table in ("dmp_patient", "dmp_document"):
        db.executescript(f"CREATE TABLE t AS SELECT * FROM {table}; DROP TABLE {table}; ALTER TABLE t RENAME TO {table};")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-base")
    h.make_folder(root)  # its test PKI is copied by every example (generating one costs ~1 s)
    return root


@contextlib.contextmanager
def _pg_ledger():
    """A PostgreSQL ledger in a schema of its own, upgraded (`dmp-connector db upgrade`), dropped afterwards."""
    import sqlalchemy as sa

    from conftest import PG_URL
    from connector.ledger.repo import open_ledger

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        open_ledger(url, auto_migrate=True).engine.dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _expected_decisions(db) -> int:
    """One decision per row with an empty key, one per distinct (document_id, version) of the others."""
    empty = db.execute("SELECT count(*) FROM dmp_document WHERE document_id IS NULL OR version IS NULL "
                       "OR patient_id IS NULL").fetchone()[0]
    keyed = db.execute("SELECT count(*) FROM (SELECT DISTINCT document_id, version FROM dmp_document WHERE "
                       "document_id IS NOT NULL AND version IS NOT NULL AND patient_id IS NOT NULL)").fetchone()[0]
    return empty + keyed


def _fuzzed_run(base, directory, broken: list[tuple[dict, dict]], keyless: bool) -> None:
    with _pg_ledger() as ledger_url:
        _run_and_check(base, directory, ledger_url, broken, keyless)


def _run_and_check(base, directory, pg_ledger, broken, keyless) -> None:
    prefix = "F" + uuid.uuid4().hex[:8]
    store = directory / "store"
    healthy = set(h.synthetic_store(store, N_HEALTHY, seed=3, per_patient=(2, 2), prefix=prefix))
    folder = h.make_folder(directory, pki_from=base / "pki")
    (directory / "outside").mkdir()
    (directory / "outside" / "secret.pdf").write_bytes(SECRET)
    os.symlink(directory / "outside" / "secret.pdf", store / "documents" / "link-out.pdf")
    os.mkfifo(store / "documents" / "fifo.pdf")
    with sqlite3.connect(store / "store.sqlite3") as db:
        if keyless:
            _keyless(db)
        pids = [r[0] for r in db.execute("SELECT patient_id FROM dmp_patient ORDER BY patient_id")]
        for i, (doc_changes, patient_changes) in enumerate(broken):
            pid = pids[i % len(pids)]  # the broken rows share their patients with healthy documents
            if patient_changes:
                pid = f"{prefix}-BP{i}"
                try:
                    _insert(db, "dmp_patient", h.patient_row(pid, h.valid_nir(random.Random(i)), **patient_changes))
                except sqlite3.IntegrityError:  # a store with constraints refuses it: its document has no patient
                    pass
            did = f"{prefix}-B{i}"
            (store / "documents" / f"{did}.pdf").write_bytes(PDF)
            row = h.document_row(did, pid, content_path=f"documents/{did}.pdf")
            row.update(doc_changes)
            try:
                _insert(db, "dmp_document", row)
            except sqlite3.IntegrityError:  # a store with keys refuses it: not in the store, nothing to decide
                pass
        want = _expected_decisions(db)

    cfg = folder.configure(h.PLACEHOLDER_URL)
    with h.sandbox(folder, keep_content=True) as sb:  # without its content, no body could be checked below
        cfg = folder.configure(sb.url, ledger={"url": pg_ledger}, validation={"schematron": "off", "process": False},
                               store={"content_root": str(store)})
        settings = config.load(cfg)
        decisions = list(dry_run.decisions(settings))
        first = run_action.run(settings)  # never raises: one row costs that row
        second = run_action.run(settings)

    assert len(decisions) == want, (len(decisions), want)
    assert all(d.eligible or d.reason for d in decisions)
    assert first.counts.get("error", 0) == 0 and second.counts.get("error", 0) == 0
    assert second.counts.get("fed", 0) == 0
    states = h.ledger_states(pg_ledger)
    fed = {k for k, (state, _) in states.items() if state == "FED"}
    assert healthy <= fed, sorted(healthy - fed)
    h.assert_exactly_once(folder, fed)  # healthy ones and any broken row that happened to be valid, once each
    sent = _sent_bodies(folder)
    assert SECRET not in sent and len(sent) == len(fed)


def _sent_bodies(folder) -> list[bytes]:
    """The PDFs the sandbox received, out of their CDAs."""
    import base64

    from lxml import etree

    bodies = []
    with sqlite3.connect(folder.sandbox_state) as db:
        for (content,) in db.execute("SELECT content FROM documents WHERE is_signature = 0"):
            for text in etree.fromstring(content).iter("{urn:hl7-org:v3}text"):
                if text.get("representation") == "B64":
                    bodies.append(base64.b64decode("".join(text.text.split())))
    return bodies


# The explicit example: a keyed store refused its patient row (NOT NULL) and the harness, not the run, ended it.
# FUZZ_EXAMPLES=200 FUZZ_NO_SHRINK=1 for a longer search; the default stays well under a minute (~2 s an example).
_PHASES = (Phase.explicit, Phase.generate) if os.environ.get("FUZZ_NO_SHRINK") else tuple(Phase)


@hsettings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 15)), deadline=None, phases=_PHASES,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(broken=st.lists(st.tuples(_broken_document, _broken_patient), min_size=1, max_size=5), keyless=st.booleans())
@example(broken=[({"document_id": None}, {"ins_matricule": None, "opposed_to_feeding": None})], keyless=False)
# one key stored as a BLOB on two rows of a keyless store: a repeated key (it was read as two documents)
@example(broken=[({"document_id": b"<ClinicalDocument/>"}, {}), ({"document_id": b"<ClinicalDocument/>"}, {})],
         keyless=True)
def test_a_fuzzed_store_never_aborts_a_run_and_healthy_documents_are_fed_once(base, tmp_path_factory, broken, keyless):
    _fuzzed_run(base, tmp_path_factory.mktemp("fuzz"), broken, keyless)


def test_keys_longer_than_the_ledger_columns_cost_their_row_only(base, tmp_path):
    """On a PostgreSQL ledger, a finess_geo, document_id or type_code longer than its column aborted the run
    (nobody fed, exit 1, a raw traceback)."""
    _fuzzed_run(base, tmp_path, [({"finess_geo": "0B0999998" + "8" * 10}, {}),
                                            ({"document_id": "D" * 65}, {}), ({"type_code": "11490-0" + "0" * 30}, {}),
                                            ({"patient_id": "P" * 70}, {})], keyless=False)
