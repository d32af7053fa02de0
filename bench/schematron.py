"""The ANS schematron alone: milliseconds of CPU per CDA for each engine, over the CDAs the connector builds.

    python bench/schematron.py [--documents 300] [--engines python,saxon] [--profile out.prof]

The CDAs are built from `bench/common.py`'s synthetic store rows (distinct patients, authors, dates, types), their
base64 body shrunk as the run shrinks it; each engine checks all of them once to warm up (compilation, caches), then
again, timed with the process's CPU clock. Saxon runs in this process here (`validation.process` aside), so the
figures compare the engines, not the run's processes. `--profile` writes cProfile statistics of the python engine's
timed pass.
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


def cpu_ms_per_cda(check, trees, profile: str | None = None) -> float:
    for tree in trees:  # warm-up: compilation, caches
        if check(tree):
            raise SystemExit(f"a synthetic CDA is invalid: {check(tree)[:2]}")
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler:
        profiler.enable()
    for tree in trees:
        check(tree)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return (time.process_time() - start) * 1000 / len(trees)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--engines", default="python,saxon", help="comma-separated: python, saxon")
    parser.add_argument("--profile", help="write cProfile statistics of the python engine's timed pass here")
    args = parser.parse_args(argv)
    trees = synthetic_cdas(args.documents)
    figures, rows = {}, []
    for engine in args.engines.split(","):
        if engine == "saxon":
            check = validate._generated.errors  # in this process, not validation.process's
        else:
            from connector.payload import schematron_python
            start = time.process_time()
            interpreter = schematron_python.interpreter()
            rows.append(("python engine built in", f"{(time.process_time() - start):.2f} s of CPU"))
            check = interpreter.errors
        figures[engine] = cpu_ms_per_cda(check, trees, args.profile if engine == "python" else None)
        rows.append((f"{engine}: CPU per CDA ({len(trees)} CDAs)", f"{figures[engine]:.2f} ms"))
    rows.append(("peak RSS of this process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"))
    rows.append(("load average", " ".join(f"{x:.1f}" for x in os.getloadavg())))
    print(table(rows))
    return figures


if __name__ == "__main__":
    main()
