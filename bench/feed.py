"""Benchmark of a real `dmp-connector run` against the sandbox DMP in its own process, over mutual TLS.

    python bench/feed.py --documents 2000 --latency-ms 100 --concurrency 4
    python bench/feed.py --documents 100000 --dry-run-only
    python bench/feed.py --status-ledger 1000000

Feed mode: synthetic store of N documents (1–5 per patient, PDFs of 50 KB–1 MB), test PKI, sandbox
(`sandbox serve --fast --latency-ms L`), then `run --format json` with dmp.max_in_flight = C; prints wall
time, documents/s, the connector's CPU ms per document and peak RSS, and what the sandbox stored.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/feed.py` from a clone

import sqlalchemy as sa  # noqa: E402

from bench.common import CHUNK, CLI, Sandbox, create_store, run_measured, table, write_config  # noqa: E402
from connector.ledger.repo import open_ledger  # noqa: E402
from connector.ledger.schema import documents, runs  # noqa: E402
from connector.sandbox.report import report  # noqa: E402
from connector.trust.pki import create_test_pki  # noqa: E402

UNUSED_URL = "https://127.0.0.1:1/si-dmp-server/v2/services"  # modes that never reach the DMP


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", "-n", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--concurrency", "-c", type=int, default=4, help="dmp.max_in_flight")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                        help="sandbox skips its schematron check (default: --fast)")
    parser.add_argument("--schematron", choices=("every", "sample", "off"), default="every",
                        help="the connector's validation.schematron (default: every, the configuration's default)")
    parser.add_argument("--engine", choices=("saxon", "python"), default="python",
                        help="the connector's validation.engine (default: python, the configuration's default)")
    parser.add_argument("--pdf-pool", type=int, default=500, help="distinct PDF files the documents point at")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store-journal", choices=("delete", "wal"), default="delete",
                        help="SQLite journal mode of the synthetic store (delete: SQLite's default, as the sample store)")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary folder, removed)")
    parser.add_argument("--time-limit", type=float, help="interrupt the run after S seconds (RSS trend on huge stores)")
    parser.add_argument("--profile", type=Path, help="profile the connector: FILE.prof with cProfile (main thread), "
                                                     "any other name with py-spy (threads holding the GIL: where the CPU goes, collapsed stacks)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run-only", action="store_true", help="time `run --dry-run --format json` over the store")
    mode.add_argument("--status-ledger", type=int, metavar="N", help="time `status` on a synthetic ledger of N documents")
    args = parser.parse_args(argv)

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="dmp-bench-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        _fresh(work)
        if not (work / "pki" / "ca.pem").is_file():
            create_test_pki(work / "pki")
        if args.status_ledger:
            figures = bench_status(work, args.status_ledger)
        elif args.dry_run_only:
            figures = bench_dry_run(work, args)
        else:
            figures = bench_feed(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1) if args.json else table([(k, _show(v)) for k, v in figures.items()]))
    return figures


def _fresh(work: Path) -> None:
    """Start from an empty store, ledger and sandbox state (the PKI is kept: it is slow to make)."""
    for name in ("state", "store"):
        shutil.rmtree(work / name, ignore_errors=True)
    for name in ("sandbox.sqlite3", "sandbox.sqlite3-wal", "sandbox.sqlite3-shm"):
        (work / name).unlink(missing_ok=True)


def _show(value) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def _store(work: Path, args) -> dict:
    info = create_store(work / "store", args.documents, seed=args.seed, pool=args.pdf_pool, journal=args.store_journal)
    return {"documents": info.documents, "patients": info.patients, "distinct PDFs": info.pdf_files,
            "mean PDF KB": round(info.pdf_bytes / info.pdf_files / 1024), "store built in s": round(info.seconds, 1)}


def bench_feed(work: Path, args) -> dict:
    figures = _store(work, args)
    load = os.getloadavg()
    sandbox = Sandbox(work, latency_ms=args.latency_ms, fast=args.fast)
    try:
        config = write_config(work, sandbox.url, args.concurrency, args.schematron, args.engine)
        sandbox_cpu = sandbox.cpu_seconds()
        cmd = _profiled(args.profile) + CLI[1:] + ["run", "--config", str(config), "--format", "json"]
        with open(work / "run.json", "wb") as out:
            m = run_measured(cmd, cwd=work, stdout=out, log=work / "run.log", time_limit=args.time_limit)
        sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu
    finally:
        sandbox.stop()
    try:  # py-spy writes its own lines around the run's JSON
        text = (work / "run.json").read_text()
        summary = json.loads(text[text.index("{"): text.rindex("}") + 1])
    except ValueError:
        summary = {"documents": {}}
    stored = report(sandbox.state)
    fed = summary["documents"].get("fed", 0)
    n = fed or stored["documents"]  # an interrupted run prints no summary: count what the sandbox stored
    figures.update({
        "load average (1 min) before/after": f"{load[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "latency ms": args.latency_ms, "max_in_flight": args.concurrency, "sandbox fast": args.fast,
        "schematron": args.schematron,
        "engine": args.engine,
        "exit code": m.returncode, "interrupted after s": m.stopped_after,
        "store journal": args.store_journal,
        "write-back failures (log)": (work / "run.log").read_text(errors="replace").count("write-back to the store failed"),
        "fed": fed, "deferred": summary["documents"].get("deferred", 0), "failed": summary["documents"].get("failed", 0),
        "wall s": round(m.wall_s, 1), "documents/s": round(n / m.wall_s, 1),
        "connector CPU s": round(m.cpu_s, 1), "connector CPU ms/doc": round(1000 * m.cpu_s / max(1, n), 1),
        "of which system ms/doc": round(1000 * m.system_s / max(1, n), 1),
        "connector peak RSS MB": round(m.peak_rss_mb, 1),
        "fed per 30 s": " ".join(map(str, fed_per_window(work / "state" / "ledger.sqlite3"))),
        "RSS samples (s, MB)": _samples(m.rss_samples),
        "with its schematron process (s, MB)": _samples(m.tree_rss_samples) if m.tree_rss_samples != m.rss_samples else "-",
        "sandbox CPU ms/doc": round(1000 * sandbox_cpu / max(1, n), 1),
        "sandbox submissions": stored["submissions"], "sandbox documents stored": stored["documents"],
        "sandbox duplicates": stored["duplicate_deliveries"], "sandbox rejected requests": stored["rejected_requests"],
    })
    return figures


def _profiled(out: Path | None) -> list[str]:
    if out is None:
        return [sys.executable]
    if out.suffix == ".prof":
        return [sys.executable, "-m", "cProfile", "-o", str(out.resolve())]
    py_spy = Path(sys.executable).with_name("py-spy")  # pip install py-spy
    return [str(py_spy), "record", "--gil", "--format", "raw", "--rate", "100", "--output", str(out.resolve()), "--", sys.executable]


def _samples(samples: list[tuple[float, float]]) -> str:
    return ", ".join(f"{t:g}:{r:.0f}" for t, r in samples[:: max(1, len(samples) // 12)])


def fed_per_window(ledger_path: Path, window_s: int = 30) -> list[int]:
    """Documents fed in each `window_s` seconds of the run, from the ledger's fed_at (the last window is
    partial): a run that slows down as the ledger grows shows it here."""
    engine = sa.create_engine(f"sqlite:///{ledger_path}")
    try:
        with engine.connect() as conn:
            times = conn.execute(sa.select(documents.c.fed_at).where(documents.c.fed_at.is_not(None))
                                 .order_by(documents.c.fed_at)).scalars().all()
    finally:
        engine.dispose()
    counts = collections.Counter(int((t - times[0]).total_seconds() // window_s) for t in times)
    return [counts[i] for i in range(max(counts) + 1)] if counts else []


def bench_dry_run(work: Path, args) -> dict:
    figures = _store(work, args)
    config = write_config(work, UNUSED_URL, args.concurrency)
    with open("/dev/null", "wb") as devnull:
        m = run_measured(CLI + ["run", "--dry-run", "--format", "json", "--config", str(config)], cwd=work,
                         stdout=devnull, log=work / "dry-run.log")
    figures.update({"exit code": m.returncode, "dry-run wall s": round(m.wall_s, 2), "dry-run CPU s": round(m.cpu_s, 2),
                    "dry-run peak RSS MB": round(m.peak_rss_mb, 1)})
    return figures


# --- a synthetic ledger of N documents, for `status` ---------------------------------------------

LEDGER_MIX = (  # (state, reason, share): a ledger after months of nightly runs
    ("FED", None, 0.86), ("SKIPPED", "INS_NOT_QUALIFIED", 0.05), ("SKIPPED", "DOCUMENT_NOT_VALIDATED", 0.03),
    ("SKIPPED", "PATIENT_OPPOSED", 0.01), ("SKIPPED", "TYPE_NOT_ALLOWED", 0.01), ("SKIPPED", "ALREADY_FED", 0.0),
    ("FAILED", "XDSPatientIdDoesNotMatch", 0.01), ("FAILED", "CDA_INVALID", 0.005), ("DEFERRED", "TRANSIENT_ERROR", 0.005),
    ("PENDING", None, 0.01), ("SKIPPED", "SUPERSEDED", 0.01),
)


def ledger_rows(n: int, seed: int = 7):
    rng = random.Random(seed)
    states = [(s, r) for s, r, _ in LEDGER_MIX]
    weights = [w for _, _, w in LEDGER_MIX]
    start = dt.datetime(2026, 1, 1)
    for i in range(n):
        state, reason = rng.choices(states, weights)[0]
        at = start + dt.timedelta(seconds=i * 30)
        yield dict(document_id=f"D{i:08d}", version=1, patient_id=f"P{i // 3:07d}", finess_geo="0B0999998",
                   type_code="11490-0", state=state, reason=reason,
                   detail=None if reason is None else "synthetic", held=False, attempts=1 if state != "SKIPPED" else 0,
                   first_seen_at=at, updated_at=at, first_attempt_at=at if state in ("FED", "FAILED", "DEFERRED") else None,
                   next_attempt_at=at + dt.timedelta(hours=2) if state == "DEFERRED" else None,
                   fed_at=at if state == "FED" else None, unique_id=f"1.2.250.1.999.42.1.{i}" if state == "FED" else None,
                   submission_id=None, last_run_id=1 + i // 5000)


def bench_status(work: Path, n: int) -> dict:
    config = write_config(work, UNUSED_URL, 4)
    (work / "store").mkdir(exist_ok=True)
    create_store(work / "store", 1, pool=1)  # `status` never reads the store, but the configuration names one
    started = time.monotonic()
    ledger = open_ledger(f"sqlite:///{work / 'state' / 'ledger.sqlite3'}")
    rows = ledger_rows(n)
    with ledger.engine.begin() as conn:
        while chunk := list(itertools.islice(rows, CHUNK * 4)):
            conn.execute(sa.insert(documents), chunk)
        conn.execute(sa.insert(runs), [dict(mode="run", status="done", started_at=dt.datetime(2026, 1, 1) + dt.timedelta(days=d),
                                            finished_at=dt.datetime(2026, 1, 1, 0, 20) + dt.timedelta(days=d), counts={"fed": 5000})
                                       for d in range(1 + n // 5000)])
    ledger.engine.dispose()
    built = time.monotonic() - started
    results = {}
    for fmt in ("text", "json"):
        timings = []
        for _ in range(3):  # first one with a cold page cache for this process, then warm
            with open("/dev/null", "wb") as devnull:
                m = run_measured(CLI + ["status", "--format", fmt, "--config", str(work / "dmp-connector.toml")],
                                 cwd=work, stdout=devnull, log=work / "status.log")
            timings.append(m)
        results[fmt] = timings
    # the same interpreter start-up and imports as `status`, without any query
    imports = "import connector.cli, connector.actions.status, connector.ledger.repo, connector.report.figures"
    baseline = run_measured([sys.executable, "-c", imports], cwd=work, stdout=subprocess.DEVNULL, log=work / "imports.log")
    return {
        "ledger documents": n, "ledger built in s": round(built, 1), "exit code": results["text"][0].returncode,
        "status (text) wall s, 3 runs": ", ".join(f"{m.wall_s:.2f}" for m in results["text"]),
        "status (json) wall s, 3 runs": ", ".join(f"{m.wall_s:.2f}" for m in results["json"]),
        "of which interpreter + status's imports s": round(baseline.wall_s, 2),
        "status peak RSS MB": round(max(m.peak_rss_mb for m in results["text"]), 1),
    }


if __name__ == "__main__":
    main()
