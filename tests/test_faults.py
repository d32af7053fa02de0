"""Faults: a sandbox DMP answering 20 % of requests with HTTP 503 or XDSRegistryBusy and dropping 5 % of the
connections after storing the submission: every eligible document is eventually FED, exactly once, and the
dropped replies were settled by ITI-18 (reconciliation), not by blind resends."""

import delivery_harness as h


def test_faulty_dmp_every_document_fed_exactly_once_with_reconciliation(tmp_path):
    eligible = set(h.synthetic_store(tmp_path / "store", 40, seed=5, per_patient=(1, 1)))  # 40 submission sets
    folder = h.make_folder(tmp_path)
    # One sender: requests reach the sandbox in a fixed order, so its seeded faults are reproducible.
    with h.sandbox(folder, fail_rate=0.2, drop_after_commit_rate=0.05, latency_ms=20, seed=3) as sb:
        folder.configure(sb.url, dmp={"max_in_flight": 1, "read_timeout": 5.0},
                         **{"dmp.retry": {"in_run_attempts": 3, "in_run_wait_initial": 0.02, "in_run_wait_max": 0.1,
                                          "deferred_min_minutes": 0, "deferred_max_minutes": 0}})
        runs = h.run_until_done(folder.cfg, max_runs=8)
    rep = h.assert_exactly_once(folder, eligible)
    assert rep["injected_faults"], "no fault was injected: the test proves nothing"
    assert rep["submissions_reply_dropped"] >= 1, rep["injected_faults"]
    assert rep["rejected"] == 0, rep["rejections"]  # no stored submission set was sent again

    url = folder.ledger_url
    reconciled = h.ledger_rows(url, "SELECT count(*) AS n FROM submissions WHERE outcome = 'reconciled'")[0].n
    found = h.ledger_rows(url, "SELECT count(*) AS n FROM audit WHERE action = 'ITI-18' AND outcome = 'found'")[0].n
    assert reconciled >= rep["submissions_reply_dropped"] and found >= reconciled, (reconciled, found, rep)
    retried = h.ledger_rows(url, "SELECT count(*) AS n FROM submissions WHERE attempts > 1")[0].n
    assert retried >= 1  # transient errors were retried
    # seeded faults, one sender: the in-run retries and the ITI-18 lookups settle everything in the first run
    assert len(runs) == 1, [r.stdout[-500:] for r in runs]
