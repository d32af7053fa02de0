"""Several instances on one PostgreSQL ledger: two `dmp-connector run` processes with different instance names
feed the same store at the same time; each document reaches the DMP exactly once, and when one instance is
killed mid-run, its leases expire and the other instance completes its work."""

import signal

import delivery_harness as h


def _two_instances(tmp_path, pg_url: str, documents: int, lease_minutes: float = 10.0):
    eligible = set(h.synthetic_store(tmp_path / "store", documents, seed=11))
    folder = h.make_folder(tmp_path)
    return folder, eligible, lease_minutes


def _configs(folder, base_url: str, pg_url: str, lease_minutes: float):
    cfgs = {}
    for name in ("a", "b"):
        cfgs[name] = folder.configure(base_url, path=folder.path / f"{name}.toml" if name == "b" else None,  # a: folder.cfg
                                      ledger={"url": pg_url, "instance": f"instance-{name}", "lease_minutes": lease_minutes})
    return cfgs


def _fed_by_run(url: str) -> dict[str, int]:
    """FED documents per instance (the runs' recorded counts, keyed by the process that ran them)."""
    rows = h.ledger_rows(url, "SELECT r.pid, count(*) AS n FROM documents d JOIN submissions s ON s.id = d.submission_id"
                              " JOIN runs r ON r.id = s.run_id WHERE d.state = 'FED' GROUP BY r.pid")
    return {r.pid: r.n for r in rows}


def test_two_instances_feed_1000_documents_exactly_once(tmp_path, pg_url):
    folder, eligible, _ = _two_instances(tmp_path, pg_url, 1000)
    with h.sandbox(folder, latency_ms=5) as sb:
        cfgs = _configs(folder, sb.url, pg_url, 10.0)
        assert h.run_cli(cfgs["a"], "db", "upgrade").returncode == 0
        procs = {name: h.popen_run(cfg, log_path=tmp_path / f"{name}.log") for name, cfg in cfgs.items()}
        for name, proc in procs.items():
            assert proc.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        h.run_until_done(cfgs["a"])  # normally a no-op: both runs settled everything they claimed
    h.assert_exactly_once(folder, eligible)
    shares = _fed_by_run(pg_url)
    assert len(shares) == 2 and all(n > 0 for n in shares.values()), shares  # both instances did real work


def test_instance_killed_mid_run_the_other_takes_its_work_over(tmp_path, pg_url):
    folder, eligible, lease = _two_instances(tmp_path, pg_url, 300, lease_minutes=0.05)  # 3 s leases
    with h.sandbox(folder, latency_ms=5) as sb:
        cfgs = _configs(folder, sb.url, pg_url, lease)
        assert h.run_cli(cfgs["a"], "db", "upgrade").returncode == 0
        a = h.Watched(cfgs["a"], tmp_path / "a.log")
        b = h.popen_run(cfgs["b"], log_path=tmp_path / "b.log")
        assert a.wait_for(a.SUBMISSION, 20), "instance a ended before it could be killed"  # its 20th DMP answer
        a.kill()
        assert a.finish(timeout=30) == -signal.SIGKILL
        assert b.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()[-3000:]
        # What a still held when it died is taken over by b once the lease has expired.
        h.run_until_done(cfgs["b"], max_runs=15)
    h.assert_exactly_once(folder, eligible)
    assert h.ledger_rows(pg_url, "SELECT count(*) AS n FROM submissions WHERE lease_owner IS NOT NULL")[0].n == 0
