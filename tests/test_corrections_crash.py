"""Crash safety of the corrections (issue 17): the real `dmp-connector run`, in a subprocess, SIGKILLed at every
state transition of a run that replaces (a new version, a masking change) and withdraws (a CANCELLED document),
then restarted until done: the sandbox DMP ends with exactly the expected statuses, nothing twice."""

import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import delivery_harness as h
from connector import config, testhooks
from connector.payload import ids
from connector.sandbox.state import SandboxState

# The correcting run journals three things (two replacement sets, one withdrawal): each point is reached up to
# three times (after_send: once per answer), so the third reach is a withdrawal's or a replacement's alike.
SCENARIOS = [(point, n) for point in testhooks.POINTS for n in (1, 2, 3)]
EXPECTED = {  # document -> its entries' (CDA versionNumber, status, confidentiality codes), oldest first
    "DOC-001": [(1, "Deprecated", "N"), (2, "Approved", "N")],
    "DOC-002": [(1, "Deprecated", "N"), (2, "Approved", "N,MASQUE_PS")],
    "DOC-014": [(1, "Deleted", "N,INVISIBLE_REPRESENTANTS_LEGAUX")],
}


def correct_the_store(folder) -> None:
    """A new version of DOC-001, a masking change on DOC-002, DOC-014 cancelled: three corrections."""
    with sqlite3.connect(folder.store_db) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(dmp_document)")]
        values = ", ".join("2" if c == "version" else "'Lettre corrigée'" if c == "title" else c for c in columns)
        db.execute(f"INSERT INTO dmp_document ({', '.join(columns)}) SELECT {values} FROM dmp_document"
                   " WHERE document_id = 'DOC-001'")
        db.execute("UPDATE dmp_document SET mask_professionals = 1 WHERE document_id = 'DOC-002'")
        db.execute("UPDATE dmp_document SET status = 'CANCELLED' WHERE document_id = 'DOC-014'")


def dmp_entries(folder) -> dict[str, list[tuple[int, str, str]]]:
    """Every non-signature entry of the sandbox, by store document (CDA setId), oldest first."""
    oid_root = config.load(folder.cfg).structure.oid_root
    documents = {ids.document_set_id(oid_root, d) + "^": d for d, _ in h.sample_eligible()}
    state = SandboxState(folder.sandbox_state)
    try:
        rows = state.query("SELECT set_id, version, status, confidentiality FROM documents"
                           " WHERE is_signature = 0 ORDER BY id")
    finally:
        state.close()
    found: dict[str, list] = {}
    for r in rows:
        found.setdefault(documents[r["set_id"]], []).append((int(r["version"]), r["status"].rsplit(":", 1)[-1],
                                                              r["confidentiality"]))
    return found


def expected_entries() -> dict[str, list]:
    untouched = {d: [(v, "Approved", None)] for d, v in h.sample_eligible() if d not in EXPECTED}
    return {**untouched, **EXPECTED}


def _crash_then_recover(directory, pki, point: str, nth: int):
    folder = h.make_folder(directory, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        h.run_until_done(folder.cfg)
        correct_the_store(folder)
        crashed = h.run_cli(folder.cfg, crash_at=f"{point}:{nth}")
        h.run_until_done(folder.cfg)
    return f"{point}:{nth}", crashed.returncode, dmp_entries(folder), h.received(folder)


def test_crash_at_each_correction_transition_then_restart_leaves_exactly_the_expected_statuses(tmp_path, pki):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: _crash_then_recover(tmp_path / f"{s[0]}-{s[1]}", pki, *s), SCENARIOS))
    crashed = [name for name, code, _, _ in results if code == -signal.SIGKILL]
    assert len(crashed) >= len(testhooks.POINTS) * 2, crashed  # every point is reached at least twice
    want = expected_entries()
    for name, _, found, rep in results:
        got = {d: [e if d in EXPECTED else (e[0], e[1], None) for e in entries] for d, entries in found.items()}
        assert got == want, name
        assert rep["duplicate_deliveries"] == 0 and rep["same_document_other_uid"] == [], name
        assert (rep["replacements"], rep["withdrawals"]) == (2, 1), (name, rep["rejections"])
        # nothing was resent blindly: a second RPLC or ITI-57 to an entry no longer Approved would be refused
        assert rep["rejected"] == 0, (name, rep["rejections"])
