"""The benchmark still runs (bench/): a tiny feed, dry-run and status run, the schematron engines on three CDAs, and
its synthetic data is what it claims to be. No timing is asserted: figures belong in the README, not in CI."""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import feed, floor, intake, schematron  # noqa: E402
from bench.common import PDF_MAX, PDF_MIN, pdf_size, store_rows, synthetic_pdf, fictitious_nir  # noqa: E402
from connector import ins  # noqa: E402


def test_synthetic_nirs_are_distinct_and_their_keys_verify():
    matricules = [fictitious_nir(i)[0] for i in itertools.chain(range(3000), range(999_000, 1_001_000, 7))]
    assert len(set(matricules)) == len(matricules)
    assert all(ins.check_ins(m, ins.INS_NIR_TEST) is None for m in matricules)


def test_synthetic_pdfs_have_the_requested_size_and_pdf_framing():
    rng = random.Random(3)
    sizes = [pdf_size(rng) for _ in range(2000)]
    assert PDF_MIN <= min(sizes) and max(sizes) <= PDF_MAX
    for size in (PDF_MIN, 300 * 1024, PDF_MAX):
        pdf = synthetic_pdf(rng, size)
        assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
        assert abs(len(pdf) - size) < 0.02 * size
    assert synthetic_pdf(random.Random(1), PDF_MIN) != synthetic_pdf(random.Random(2), PDF_MIN)


def test_store_rows_give_exactly_n_documents_one_to_five_per_patient():
    rows = list(store_rows(1000, seed=5, pool=10))
    assert len(rows) == 1000
    per_patient = Counter(d["patient_id"] for _, d in rows)
    assert set(per_patient.values()) <= {1, 2, 3, 4, 5} and len(set(per_patient.values())) == 5
    assert sum(p is not None for p, _ in rows) == len(per_patient)  # each patient row once, with its first document
    assert len({d["document_id"] for _, d in rows}) == 1000


def test_floor_is_positive():
    costs = floor.main(["--connector-cpu-ms", "10", "--quick"])
    assert costs["floor"] > 0 and all(v > 0 for v in costs.values())
    assert costs["floor with conformance"] > costs["floor"]  # base64, CDA hashes, XSD and TLS come on top


def test_schematron_bench_times_each_engine():
    figures = schematron.main(["--documents", "3", "--engines", "python,saxon", "--rounds", "1"])
    assert set(figures) == {"python", "saxon"} and all(v > 0 for v in figures.values())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def test_feed_smoke_run_feeds_every_document_once(work):
    figures = feed.main(["--documents", "20", "--latency-ms", "0", "--concurrency", "2", "--keep", str(work), "--json"])
    assert figures["exit code"] == 0
    assert figures["fed"] == 20 and figures["failed"] == 0 and figures["deferred"] == 0
    assert figures["sandbox documents stored"] == 20 and figures["sandbox duplicates"] == 0
    assert figures["sandbox rejected requests"] == 0
    assert figures["connector CPU ms/doc"] > 0 and figures["connector peak RSS MB"] > 0


def test_dry_run_and_status_modes_run(work):
    dry = feed.main(["--documents", "20", "--dry-run-only", "--keep", str(work), "--json"])
    assert dry["exit code"] == 0 and dry["documents"] == 20
    status = feed.main(["--status-ledger", "1000", "--keep", str(work), "--json"])
    assert status["exit code"] == 0 and status["ledger documents"] == 1000


def test_intake_smoke_run_acknowledges_and_stores_every_message(tmp_path):
    figures = intake.main(["--messages", "20", "--cda-kb", "40", "--connections", "2", "--oru-every", "4",
                           "--rotate-every", "10", "--keep", str(tmp_path), "--json"])
    assert figures["ACKs"] == "AA 20" and figures["store rows"] == 20 and figures["listener exit code"] == 0
    assert 35 <= figures["CDA KB"] <= 45 and figures["contents dropped (rotations)"] == 2
    assert figures["listener CPU ms/message"] > 0 and figures["ACK ms p99"] >= figures["ACK ms p50"] > 0
