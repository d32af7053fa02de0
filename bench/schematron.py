"""The ANS schematron alone: milliseconds of CPU per CDA for each engine, over the CDAs the connector builds.

    python bench/schematron.py [--documents 300] [--engines python,saxon,saxon-process] [--profile out.prof]

The CDAs are built from `bench/common.py`'s synthetic store rows (distinct patients, authors, dates, types), their
base64 body shrunk as the run shrinks it; each engine checks all of them once to warm up (compilation, caches), then
again, timed with the CPU clock, `--rounds` times in turn (best and median printed): "saxon" is Saxon in this process; "saxon-process" is the run's way with the "saxon" engine
(`validation.process`: the CDA serialised, sent to Saxon's process, its errors read back), the CPU of both processes
counted. `--profile` writes cProfile statistics of the python engine's timed pass.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import patient_row, store_rows, table  # noqa: E402
from connector.actions.demo import SITES  # noqa: E402
from connector.config import Site, Structure  # noqa: E402
from connector.payload import validate  # noqa: E402
from connector.payload.cda import build_cda  # noqa: E402
from connector.store import Document, Patient  # noqa: E402


def synthetic_cdas(n: int) -> list:
    """N parsed CDAs as the run hands them to the schematron (body shrunk)."""
    sites = {code: Site(code, name, city, "ETABLISSEMENT") for code, name, city in (s[:3] for s in SITES)}
    structure = Structure("0B0999999", "1.2.250.1.999.42", "Centre Hospitalier de Test", tuple(sites.values()),
                          "1.2.250.1.999.42.9")
    trees, patient = [], None
    for index, (patient_fields, row) in enumerate(store_rows(n, 7, 1)):
        if patient_fields is not None:
            patient = Patient(**patient_fields)
        document = Document(**row)
        xml = build_cda(document, patient, sites[document.finess_geo], structure, b"%PDF-1.4\n%%EOF\n",
                        unique_id=f"1.2.250.1.999.42.1.{index}")
        tree = validate.parse_untrusted(xml)
        validate._shrink_body(tree)
        trees.append(tree)
    return trees


def _children_cpu_s() -> float:
    """User + system CPU of this process's live children (the schematron process)."""
    total = 0.0
    for line in Path("/proc/self/task").glob("*/children"):
        for pid in line.read_text().split():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def check_all(check, trees) -> None:
    for tree in trees:  # warm-up: compilation, caches; and the synthetic CDAs must be valid
        if check(tree):
            raise SystemExit(f"a synthetic CDA is invalid: {check(tree)[:2]}")


def cpu_ms_per_cda(check, trees, profiler: cProfile.Profile | None = None) -> float:
    children = _children_cpu_s()
    start = time.process_time()
    if profiler:
        profiler.enable()
    for tree in trees:
        check(tree)
    if profiler:
        profiler.disable()
    return (time.process_time() - start + _children_cpu_s() - children) * 1000 / len(trees)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--engines", default="python,saxon,saxon-process", help="comma-separated: python, saxon, saxon-process")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes of each engine, taken in turn")
    parser.add_argument("--profile", help="write cProfile statistics of the python engine's timed passes here")
    args = parser.parse_args(argv)
    trees = synthetic_cdas(args.documents)
    checks, rows = {}, []
    for engine in args.engines.split(","):
        if engine == "saxon":
            checks[engine] = validate._generated.errors  # in this process, not validation.process's
        elif engine == "saxon-process":
            from connector.payload.schematron_process import SchematronProcess
            process = SchematronProcess()
            checks[engine] = lambda tree: process.submit(tree).result()
        else:
            from connector.payload import schematron_python
            start = time.process_time()
            checks[engine] = schematron_python.interpreter().errors
            rows.append(("python engine built in", f"{(time.process_time() - start):.2f} s of CPU"))
        check_all(checks[engine], trees)
    profiler = cProfile.Profile() if args.profile else None
    timings = {engine: [] for engine in checks}
    for _ in range(args.rounds):  # the engines in turn, so that a shared machine's load falls on each alike
        for engine, check in checks.items():
            timings[engine].append(cpu_ms_per_cda(check, trees, profiler if engine == "python" else None))
    if profiler:
        profiler.dump_stats(args.profile)
    figures = {engine: min(times) for engine, times in timings.items()}
    for engine, times in timings.items():
        rows.append((f"{engine}: CPU per CDA ({len(trees)} CDAs, best / median of {args.rounds})",
                     f"{min(times):.2f} / {sorted(times)[len(times) // 2]:.2f} ms"))
    rows.append(("peak RSS of this process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"))
    rows.append(("load average", " ".join(f"{x:.1f}" for x in os.getloadavg())))
    print(table(rows))
    return figures


if __name__ == "__main__":
    main()
