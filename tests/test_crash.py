"""Crash safety: the real `dmp-connector run`, in a subprocess, SIGKILLed at every state transition and at
random moments, then restarted until done: every eligible document reaches the DMP exactly once."""

import random
import signal
from concurrent.futures import ThreadPoolExecutor

import delivery_harness as h
from connector import testhooks

SCENARIOS = [(point, n) for point in testhooks.POINTS for n in (1, 2)]


def _crash_then_recover(directory, pki, point: str, nth: int) -> tuple[str, dict, int]:
    folder = h.make_folder(directory, pki_from=pki.directory)  # the sample store: 9 eligible documents, 8 submission sets (IPP-001: 2 sites, 3 activities on one)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        crashed = h.run_cli(folder.cfg, crash_at=f"{point}:{nth}")
        assert crashed.returncode == -signal.SIGKILL, f"{point}:{nth} did not crash:\n{crashed.stderr[-2000:]}"
        h.run_until_done(folder.cfg)
    reconciled = h.ledger_rows(folder.ledger_url, "SELECT count(*) AS n FROM submissions WHERE outcome = 'reconciled'")[0].n
    return f"{point}:{nth}", h.assert_exactly_once(folder, h.sample_eligible()), reconciled


def test_crash_at_each_state_transition_then_restart_feeds_each_document_once(tmp_path, pki):
    with ThreadPoolExecutor(2) as pool:  # each scenario is its own folder, sandbox and ledger
        results = list(pool.map(lambda s: _crash_then_recover(tmp_path / f"{s[0]}-{s[1]}", pki, *s), SCENARIOS))
    assert [r[0] for r in results] == [f"{p}:{n}" for p, n in SCENARIOS]
    for name, rep, reconciled in results:
        # A resend of a stored submission set would have been refused by the sandbox (duplicate uniqueIds).
        assert rep["rejected"] == 0 and rep["submissions"] == 8, (name, rep["rejections"])
        # Killed after the DMP stored a submission and before the ledger settled it, the DMP is ahead of
        # the ledger: the restart settles it by ITI-18 (found -> FED), not by resending.
        if name.split(":")[0] in ("after_send", "before_settle"):
            assert reconciled >= 1, (name, reconciled)


def _kill_chain(directory, pki, seed: int, kills: int) -> tuple[int, int]:
    """Kill -9 `kills` runs at random moments of their working phase: right after the run has started, or right
    after its n-th DMP answer (n random), read from the run's own output as it comes (no clock involved); each
    run takes over where the last one died; then rerun until done and check every document arrived exactly once."""
    rng = random.Random(seed)
    eligible = set(h.synthetic_store(directory / "store", 300, seed=seed))
    folder = h.make_folder(directory, pki_from=pki.directory)
    log = directory / "runs.log"
    killed = 0
    with h.sandbox(folder, latency_ms=400) as sb:  # slow enough (≥ 10 s of work) that a run always has work when killed
        folder.configure(sb.url)
        for i in range(3 * kills):  # a run may finish before its random moment: try again, boundedly
            if killed == kills:
                break
            run = h.Watched(folder.cfg, log)
            answers = rng.randint(0, 6)
            if run.wait_for(run.STARTED) and (answers == 0 or run.wait_for(run.SUBMISSION, answers)):
                run.kill()
            code = run.finish(timeout=60)
            assert code in (0, -signal.SIGKILL), (i, code, log.read_text()[-3000:])
            killed += code == -signal.SIGKILL
        h.run_until_done(folder.cfg)
    h.assert_exactly_once(folder, eligible)
    looked_up = h.ledger_rows(folder.ledger_url, "SELECT count(*) AS n FROM audit WHERE action = 'ITI-18'")[0].n
    return killed, looked_up


def test_killed_at_twenty_random_moments_then_restart_feeds_each_document_once(tmp_path, pki):
    with ThreadPoolExecutor(2) as pool:  # two independent chains of 10 kills: 20 random moments
        results = list(pool.map(lambda seed: _kill_chain(tmp_path / str(seed), pki, seed, 10), (1122, 2211)))
    killed = sum(k for k, _ in results)
    assert killed == 20, results
    assert all(looked_up > 0 for _, looked_up in results), results  # open submissions were looked up, not blindly resent
