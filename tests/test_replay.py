"""An operator's hands on the queue: a permanent DMP refusal is FAILED with its reason; `replay --dry-run`
changes nothing; after correction `replay --reason` feeds it, exactly once; `hold` keeps a document out of
runs (and of a replay's run) until `release`."""

import json
import sqlite3

from click.testing import CliRunner

import delivery_harness as h
from connector import ins
from connector.cli import main

CLOSED = "XDSUnknownPatientId"


def _cli(cfg, *args, code=0):
    result = CliRunner().invoke(main, [*args, "--config", str(cfg)])
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def test_replay_after_correction_dry_run_hold_and_release(tmp_path):
    store = tmp_path / "store"
    keys = h.synthetic_store(store, 4, seed=3, per_patient=(2, 2))  # two patients, two documents each
    folder = h.make_folder(tmp_path)
    with sqlite3.connect(folder.store_db) as db:
        (closed_matricule, closed_pid), (_, open_pid) = db.execute(
            "SELECT ins_matricule, patient_id FROM dmp_patient ORDER BY patient_id").fetchall()
        closed_docs = {(r[0], 1) for r in db.execute("SELECT document_id FROM dmp_document WHERE patient_id = ?", (closed_pid,))}
        # a draft of the open patient: recorded SKIPPED by the first run, then held and validated
        db.execute("INSERT INTO dmp_document SELECT 'HELD-1', version, patient_id, finess_geo, type_code, title, created_at,"
                   " service_start, service_stop, author_rpps, author_family_name, author_given_name, author_specialty_code,"
                   " legal_authenticator_rpps, 'DRAFT', mime_type, content_path, content, mask_professionals,"
                   " invisible_to_patient, invisible_to_legal_representatives, updated_at, activity, announced_at"
                   " FROM dmp_document WHERE patient_id = ? LIMIT 1", (open_pid,))
    ins_cx = ins.ins_cx(closed_matricule, h.TEST_INS_OID)

    with h.sandbox(folder) as sb:
        cfg = folder.configure(sb.url)
        url = folder.ledger_url
        sb.state.set_patient(ins_cx, "closed")  # the patient closed their DMP

        # a closed DMP is a permanent refusal: FAILED, logged at ERROR with the DMP's own words, exit 1
        out = _cli(cfg, "run", code=1)
        assert "ERROR connector.deliver: submission" in out and "FAILED XDSUnknownPatientId: Failure: XDSUnknownPatientId: DMP fermé" in out
        assert "needs a human: 2 document(s) failed" in out
        states = h.ledger_states(url)
        assert {k: states[k] for k in closed_docs} == {k: ("FAILED", CLOSED) for k in closed_docs}
        assert states[("HELD-1", 1)] == ("SKIPPED", "DOCUMENT_NOT_VALIDATED")
        assert h.received(folder)["documents"] == 2

        # --dry-run lists and changes nothing
        before = h.ledger_rows(url, "SELECT * FROM documents ORDER BY document_id")
        runs_before = h.ledger_rows(url, "SELECT count(*) AS n FROM runs")[0].n
        out = _cli(cfg, "replay", "--reason", CLOSED, "--dry-run")
        assert all(f"would requeue {d} v1" in out for d, _ in closed_docs) and "2 document(s) would be requeued" in out
        assert h.ledger_rows(url, "SELECT * FROM documents ORDER BY document_id") == before
        assert h.ledger_rows(url, "SELECT count(*) AS n FROM runs")[0].n == runs_before
        assert h.received(folder)["submissions"] == 1

        # hold keeps the (now validated) document out of runs
        assert "HELD-1: held (every version)" in _cli(cfg, "hold", "HELD-1")
        with sqlite3.connect(folder.store_db) as db:
            db.execute("UPDATE dmp_document SET status = 'VALIDATED' WHERE document_id = 'HELD-1'")
        out = _cli(cfg, "run", "--format", "json")
        summary = json.loads(out[out.index("\n{") + 1:])  # after the log lines
        assert summary["skipped_by_reason"].get("HELD") == 1 and summary["documents"].get("fed", 0) == 0

        # after correction, replay feeds the failed documents now; the held one stays out
        sb.state.set_patient(ins_cx, "active")
        out = _cli(cfg, "replay", "--reason", CLOSED)
        assert all(f"{d} v1: FED" in out for d, _ in closed_docs), out
        assert h.ledger_states(url)[("HELD-1", 1)][0] != "FED"
        assert "HELD-1" not in {u.rsplit(".", 2)[0] for u in h.received_uids(folder)} and h.received(folder)["documents"] == 4

        assert "released" in _cli(cfg, "release", "HELD-1")
        _cli(cfg, "run")
        # nothing left to replay
        assert "0 document(s) requeued" in _cli(cfg, "replay", "--reason", CLOSED)

    h.assert_exactly_once(folder, set(keys) | {("HELD-1", 1)})
    assert h.received(folder)["rejections"] == {CLOSED: 1}  # refused once while closed, never resent meanwhile


def test_hold_before_any_run_keeps_the_document_out_and_hold_release_say_what_they_did(tmp_path):
    """An identity-vigilance hold is possible before the first run sees the document (by id, or id and
    version); `hold` of a FED document says so; `release` of a document not held says so (exit 1)."""
    store = tmp_path / "store"
    keys = h.synthetic_store(store, 3, seed=5, per_patient=(1, 1))
    folder = h.make_folder(tmp_path)
    (held_id, _), (versioned_id, _), (fed_id, _) = sorted(keys)
    with h.sandbox(folder) as sb:
        cfg = folder.configure(sb.url)
        out = _cli(cfg, "hold", held_id)
        assert f"{held_id}: held (every version) (no run has seen it yet: it will not be fed)" in out
        assert "already held" in _cli(cfg, "hold", held_id)
        assert f"{versioned_id} v1: held" in _cli(cfg, "hold", versioned_id, "--version", "1")
        _cli(cfg, "run")
        states = h.ledger_states(folder.ledger_url)
        assert states[(held_id, 1)] == ("SKIPPED", "HELD") and states[(versioned_id, 1)] == ("SKIPPED", "HELD")
        assert states[(fed_id, 1)] == ("FED", None)
        assert h.received(folder)["documents"] == 1

        out = _cli(cfg, "hold", fed_id)
        assert f"note: {fed_id} v1 already FED" in out

        not_held = CliRunner().invoke(main, ["release", versioned_id, "--version", "2", "--config", str(cfg)])
        assert not_held.exit_code == 1 and f"{versioned_id} v2 is not held (held versions: 1)" in not_held.output
        never = CliRunner().invoke(main, ["release", "NO-SUCH-DOC", "--config", str(cfg)])
        assert never.exit_code == 1 and "NO-SUCH-DOC is not held" in never.output
        assert f"{held_id}: released" in _cli(cfg, "release", held_id)
        assert f"{versioned_id} v1: released" in _cli(cfg, "release", versioned_id, "--version", "1")
        _cli(cfg, "run")
    h.assert_exactly_once(folder, set(keys))


def _closed_patient_failed(tmp_path, sb, folder) -> tuple[set, set]:
    """One run against a sandbox where the first of two patients closed their DMP: (their documents, FAILED
    XDSUnknownPatientId; the other patient's, FED)."""
    with sqlite3.connect(folder.store_db) as db:
        (matricule, pid), _ = db.execute("SELECT ins_matricule, patient_id FROM dmp_patient ORDER BY patient_id").fetchall()
        closed = {(r[0], 1) for r in db.execute("SELECT document_id FROM dmp_document WHERE patient_id = ?", (pid,))}
        other = {(r[0], 1) for r in db.execute("SELECT document_id FROM dmp_document WHERE patient_id != ?", (pid,))}
    sb.state.set_patient(ins.ins_cx(matricule, h.TEST_INS_OID), "closed")
    _cli(folder.cfg, "run", code=1)  # FAILED documents: a human is needed
    assert {k: h.ledger_states(folder.ledger_url)[k] for k in closed} == {k: ("FAILED", CLOSED) for k in closed}
    sb.state.set_patient(ins.ins_cx(matricule, h.TEST_INS_OID), "active")
    return closed, other


def test_replay_while_a_run_holds_the_lock_changes_nothing_and_exits_locked(tmp_path):
    from connector import config
    from connector.cli import EXIT_LOCKED
    from connector.ledger.repo import open_ledger
    from connector.runlock import run_lock

    keys = h.synthetic_store(tmp_path / "store", 4, seed=3, per_patient=(2, 2))
    folder = h.make_folder(tmp_path)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        closed, _ = _closed_patient_failed(tmp_path, sb, folder)
        before = h.ledger_rows(folder.ledger_url, "SELECT * FROM documents ORDER BY document_id")
        submissions = h.ledger_rows(folder.ledger_url, "SELECT * FROM submissions ORDER BY id")
        settings = config.load(folder.cfg)
        with run_lock(open_ledger(settings.ledger.url), settings.state_dir, settings.ledger.instance):  # a run
            locked = CliRunner().invoke(main, ["replay", "--reason", CLOSED, "--config", str(folder.cfg)])
        assert locked.exit_code == EXIT_LOCKED, locked.output
        assert h.ledger_rows(folder.ledger_url, "SELECT * FROM documents ORDER BY document_id") == before
        assert h.ledger_rows(folder.ledger_url, "SELECT * FROM submissions ORDER BY id") == submissions
        out = _cli(folder.cfg, "replay", "--reason", CLOSED)  # the run over, the replay goes through
        assert all(f"{d} v1: FED" in out for d, _ in closed), out
    h.assert_exactly_once(folder, set(keys))


def test_replay_no_run_requeues_without_certificates_and_the_next_run_feeds(tmp_path):
    """`replay --no-run` only requeues (what an operator does from a shell without the service's credentials);
    the service's next run feeds the documents once."""
    keys = h.synthetic_store(tmp_path / "store", 4, seed=3, per_patient=(2, 2))
    folder = h.make_folder(tmp_path)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        closed, _ = _closed_patient_failed(tmp_path, sb, folder)
        submissions = h.received(folder)["submissions"]
        out = _cli(folder.cfg, "replay", "--reason", CLOSED, "--no-run")
        assert "2 document(s) requeued: the next run feeds them (as the service: `systemctl start " \
               "dmp-connector-run`)" in out
        assert h.received(folder)["submissions"] == submissions
        assert {h.ledger_states(folder.ledger_url)[k][0] for k in closed} == {"DEFERRED"}
        out = _cli(folder.cfg, "run", "--format", "json")
        summary = json.loads(out[out.index("\n{") + 1:])
        # each document counted once: the two requeued ones fed, the other patient's two already fed (not four)
        assert summary["documents"]["fed"] == 2 and summary["skipped_by_reason"] == {"ALREADY_FED": 2}, summary
    h.assert_exactly_once(folder, set(keys))
