"""Benchmark of `dmp-connector intake hl7` (issue 19): messages per second, ACK latency, the listener's CPU per
message and its memory over time.

    python bench/intake.py                                       # 3,000 MDM^T02 with 1 MB CDAs, 4 connections
    python bench/intake.py --messages 100000 --cda-kb 50 --rotate-every 10000   # is memory flat?
    python bench/intake.py --store-url postgresql://127.0.0.1/test               # a scratch database there

The listener runs as its own process (`dmp-connector intake hl7`) on a fresh store; K client connections send
N messages built from the guide's official example (its CDA's PDF replaced by a bigger one, ids made distinct),
each waiting for its ACK. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/intake.py` from a clone

import sqlalchemy as sa  # noqa: E402

from bench.common import CLI, cpu_seconds, fictitious_nir, free_port, rss_mb, run_measured, synthetic_pdf, table  # noqa: E402
from connector.actions.demo import config_text  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "hl7_examples"  # the guide's, vendored
MDM_T02 = "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7"
ORU_R01 = "ORU/Transmission_initiale_ORU/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"
EXAMPLE_INS = b"279035121518989"  # the examples' test patient, replaced by a fictitious one per 3 messages
START, END = b"\x0b", b"\x1c\r"


# --- messages ------------------------------------------------------------------------------------


class Template:
    """One example message whose CDA carries a PDF of the size that makes the CDA `cda_bytes` long (a synthetic
    PDF, base64 in the CDA's B64 element: still a well-formed, schema-shaped CDA), and whose ids are made
    distinct per message: MSH-10, the CDA id (and TXA-12), its setId, the patient's INS (PID-3 and CDA).

    The PDF's base64 is the same in every message: its base64 in the message (base64 again) is computed once, the
    CDA before it padded with spaces between two elements to a multiple of 3 bytes, so that a message costs the
    bench little CPU (it shares the machine with the listener)."""

    def __init__(self, name: str, cda_bytes: int, rng: random.Random):
        message = (EXAMPLES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")
        head, b64, tail = re.match(rb"(.*?\rOBX\|1\|ED\|[^|]*\|\|(?:[^^|]*\^){4})([^|^\r]*)(.*)", message, re.S).groups()
        cda = base64.b64decode(b64 + b"=" * (-len(b64) % 4))
        pdf = re.search(rb'mediaType="application/pdf" representation="B64">([^<]*)<', cda)
        room = max(0, cda_bytes - (len(cda) - len(pdf.group(1))))
        embedded = base64.b64encode(synthetic_pdf(rng, room * 3 // 4))
        cda = cda[:pdf.start(1)] + embedded + cda[pdf.end(1):]
        self.id_root = re.search(rb'<id root="([0-9.]+)"', cda).group(1)  # ClinicalDocument/id: the first <id>
        if b"<setId" not in cda:  # the MDM example has none (mandatory since): one per message, as a DPI sends
            cda = re.sub(rb"(<versionNumber[^>]*/>)", rb'<setId root="%s.0.{n}"/>\1' % self.id_root, cda, count=1)
        else:
            cda = re.sub(rb'(<setId root=")[0-9.]+(")', rb"\g<1>%s.0.{n}\g<2>" % self.id_root, cda, count=1)
        cda = cda.replace(b'<id root="%s"' % self.id_root, b'<id root="%s.{n}"' % self.id_root, 1)
        cda = cda.replace(EXAMPLE_INS, b"{ins}")
        self.cda_size = len(cda)
        pdf = re.search(rb'mediaType="application/pdf" representation="B64">([^<]*)<', cda)
        middle = pdf.end(1) - (pdf.end(1) - pdf.start(1)) % 3
        self.before, self.middle64, self.after = cda[:pdf.start(1)], base64.b64encode(cda[pdf.start(1):middle]), cda[middle:]
        self.element = self.before.rindex(b"<")  # the B64 element's start tag: spaces may go before it
        self.head = re.sub(rb"^(MSH(?:\|[^|\r]*){8}\|)[^|\r]*", rb"\1{control}", head, count=1)
        self.head = self.head.replace(EXAMPLE_INS, b"{ins}").replace(self.id_root + b"^", self.id_root + b".{n}^")
        self.tail = tail.replace(EXAMPLE_INS, b"{ins}")

    def message(self, n: int) -> bytes:
        ins = fictitious_nir(n // 3)[0].encode()
        values = {b"{n}": b"%d" % n, b"{ins}": ins, b"{control}": b"B%09d" % n}
        pattern = re.compile(rb"\{n\}|\{ins\}|\{control\}")
        fill = lambda part: pattern.sub(lambda m: values[m.group(0)], part)  # noqa: E731
        before = fill(self.before[:self.element])
        before += b" " * (-(len(before) + len(self.before) - self.element) % 3) + self.before[self.element:]
        return (fill(self.head) + base64.b64encode(before) + self.middle64 + base64.b64encode(fill(self.after))
                + fill(self.tail))


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Sent:
    n: int
    done_at: float  # monotonic, when its ACK was read
    latency_s: float  # from its first byte sent to its ACK read
    code: str  # MSA-1


def send_all(address, templates: list[Template], messages: int, connections: int, oru_every: int,
             acked=None) -> list[Sent]:
    """`messages` messages over `connections` connections, each message waiting for its ACK; `acked(count)` is
    called after each ACK (from the senders' threads)."""
    numbers = itertools.count(1)
    lock = threading.Lock()
    results: list[Sent] = []
    errors: list[BaseException] = []

    def sender():
        try:
            with socket.create_connection(address, timeout=120) as sock:
                while True:
                    with lock:
                        n = next(numbers)
                    if n > messages:
                        return
                    template = templates[1] if oru_every and n % oru_every == 0 else templates[0]
                    frame = START + template.message(n) + END
                    started = time.monotonic()
                    sock.sendall(frame)
                    del frame
                    ack = _read_ack(sock)
                    done = time.monotonic()
                    code = re.search(rb"\rMSA\|([A-Z]{2})", ack)
                    with lock:
                        results.append(Sent(n, done, done - started, code.group(1).decode() if code else "?"))
                        count = len(results)
                    if acked is not None:
                        acked(count)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a sender failed after {len(results)} ACKs: {errors[0]!r}")
    return results


def _read_ack(sock) -> bytes:
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the listener before its ACK")
        data += chunk
    return data


# --- the store -----------------------------------------------------------------------------------


class Store:
    """A fresh store: SQLite in the work folder, or a scratch database created on the PostgreSQL server of
    `--store-url` (dropped afterwards)."""

    def __init__(self, work: Path, server_url: str | None):
        self.work, self.scratch = work, None
        if server_url is None:
            self.url = f"sqlite:///{work / 'store.sqlite3'}"
            return
        self.server = sa.engine.make_url(server_url)
        self.scratch = f"dmp_bench_intake_{os.getpid()}"
        with self._admin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {self.scratch}")
        self.url = self.server.set(database=self.scratch).render_as_string(hide_password=False)

    def _admin(self):
        return sa.create_engine(self.server, isolation_level="AUTOCOMMIT").connect()

    def size_mb(self) -> float:
        if self.scratch is None:
            return sum(p.stat().st_size for p in self.work.glob("store.sqlite3*")) / 2**20
        with self._admin() as conn:
            return conn.exec_driver_sql(f"SELECT pg_database_size('{self.scratch}')").scalar() / 2**20

    def server_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each PostgreSQL backend serving the scratch database (same machine), by pid."""
        if self.scratch is None:
            return {}
        with self._admin() as conn:
            pids = conn.exec_driver_sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.scratch}'").scalars()
            return {pid: cpu_seconds(pid) for pid in pids}

    def rows(self) -> int:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT count(*) FROM dmp_intake_document").scalar()
        finally:
            engine.dispose()

    def release_contents(self, rows_per_transaction: int = 500) -> None:
        """Drop the CDAs of the rows written so far (their rows stay): the disk stays bounded on long runs. A few
        hundred rows per transaction: one UPDATE of 10,000 held SQLite's lock past the listener's 5 s busy timeout
        (its commit then answered AR, as it should to a store locked that long)."""
        engine = sa.create_engine(self.url)
        try:
            while True:
                with engine.begin() as conn:
                    done = conn.exec_driver_sql(
                        "UPDATE dmp_document SET content = NULL WHERE (document_id, version) IN (SELECT document_id, "
                        f"version FROM dmp_document WHERE content IS NOT NULL LIMIT {rows_per_transaction})").rowcount
                if done < rows_per_transaction:
                    return
        finally:
            engine.dispose()

    def drop(self) -> None:
        if self.scratch is not None:
            with self._admin() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.scratch} WITH (FORCE)")


def write_config(work: Path, store_url: str, port: int, connections: int, workers: int | None) -> Path:
    """The demo's configuration without certificates (the intake sends nothing), with this store and listener."""
    text = config_text("https://127.0.0.1:1/unused")
    text = re.sub(r"\n\[certificates\.[^\]]+\]\n(?:[^\[\n][^\n]*\n)*", "\n", text).replace('ca_bundle = "pki/ca.pem"\n', "")
    text = re.sub(r'(\[store\]\n)url = "[^"]*"', lambda m: f'{m.group(1)}url = "{store_url}"', text)
    text += (f'\n[intake.hl7]\nlisten = "127.0.0.1:{port}"\nmax_connections = {max(16, connections + 1)}\n'
             + (f"workers = {workers}\n" if workers else ""))
    path = work / "dmp-connector.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the bench -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=3000)
    parser.add_argument("--cda-kb", type=int, default=1024, help="size of each CDA (KB; default 1024: 1 MB)")
    parser.add_argument("--connections", "-c", type=int, default=4, help="concurrent MLLP connections")
    parser.add_argument("--oru-every", type=int, default=0, metavar="K",
                        help="every K-th message is an ORU^R01 (the guide's CR de biologie), the others MDM^T02")
    parser.add_argument("--workers", type=int, help="intake.hl7.workers (default: the configuration's)")
    parser.add_argument("--store-url", help="a PostgreSQL server URL: a scratch database is made there (default: SQLite)")
    parser.add_argument("--rotate-every", type=int, metavar="M",
                        help="every M messages, drop the CDAs already stored (rows stay): bounded disk on long runs")
    parser.add_argument("--sample-every", type=float, default=10.0, help="RSS sampling period (s)")
    parser.add_argument("--profile", type=Path, help="py-spy the listener (by pid, threads holding the GIL) into FILE "
                                                     "(raw collapsed stacks)")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="dmp-bench-intake-"))
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("store.sqlite3*"):
        old.unlink()
    store = Store(work, args.store_url)
    try:
        figures = bench(work, store, args)
    finally:
        store.drop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for big in work.glob("store.sqlite3*"):  # gigabytes: what is kept is the log and configuration
                big.unlink()
    print(json.dumps(figures, indent=1) if args.json else table([(k, _show(v)) for k, v in figures.items()]))
    return figures


def bench(work: Path, store: Store, args) -> dict:
    rng = random.Random(args.seed)
    templates = [Template(MDM_T02, args.cda_kb * 1024, rng)]
    if args.oru_every:
        templates.append(Template(ORU_R01, args.cda_kb * 1024, rng))
    port = free_port()
    config = write_config(work, store.url, port, args.connections, args.workers)
    log = work / "intake.log"
    started: list = []
    measured: list = []

    def serve():
        measured.append(run_measured(CLI + ["intake", "hl7", "--config", str(config)], log=log, cwd=work,
                                     sample_every=args.sample_every, on_start=started.append))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    proc = _wait_listening(started, log, port)
    load = os.getloadavg()
    rss_start = rss_mb(proc.pid)
    profiler = _profiler(args.profile, proc.pid) if args.profile else None
    rotations = []

    def acked(count: int) -> None:
        if args.rotate_every and count % args.rotate_every == 0:
            store.release_contents()
            rotations.append(count)

    own_cpu, cpu, began = time.process_time(), cpu_seconds(proc.pid), time.monotonic()
    server_cpu = store.server_cpu()
    try:
        results = send_all(("127.0.0.1", port), templates, args.messages, args.connections, args.oru_every, acked)
    finally:
        ended, cpu = time.monotonic(), cpu_seconds(proc.pid) - cpu
        own_cpu = time.process_time() - own_cpu
        server_cpu = sum(s - server_cpu.get(pid, 0.0) for pid, s in store.server_cpu().items())
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        proc.send_signal(signal.SIGTERM)
        server.join(120)
    m = measured[0]
    n = len(results)
    codes = {}
    for r in results:
        codes[r.code] = codes.get(r.code, 0) + 1
    latencies = sorted(r.latency_s * 1000 for r in results)
    windows = _per_window(results, began, 10)
    samples = [(0.0, rss_start)] + [(t, r) for t, r in m.rss_samples]
    return {
        "load average (1 min) before/after": f"{load[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "store": "PostgreSQL" if store.scratch else "SQLite",
        "messages": n, "connections": args.connections,
        "CDA KB": round(templates[0].cda_size / 1024), "message KB": round(len(templates[0].message(1)) / 1024),
        "ORU^R01 share": f"1/{args.oru_every}" if args.oru_every else "0",
        "ACKs": " ".join(f"{k} {v}" for k, v in sorted(codes.items())),
        "wall s": round(ended - began, 1),
        "messages/s": round(n / (ended - began), 1),
        "messages per 10 s (min, median, max; full windows)": _spread(windows),
        "ACK ms p50": round(_pct(latencies, 0.50), 1), "ACK ms p95": round(_pct(latencies, 0.95), 1),
        "ACK ms p99": round(_pct(latencies, 0.99), 1), "ACK ms max": round(latencies[-1], 1) if latencies else None,
        "listener CPU ms/message": round(1000 * cpu / max(1, n), 1),
        "listener CPU % of one core": round(100 * cpu / (ended - began)),
        "PostgreSQL backends CPU ms/message": round(1000 * server_cpu / max(1, n), 1) if store.scratch else "-",
        "bench clients CPU ms/message": round(1000 * own_cpu / max(1, n), 1),
        "listener RSS MB start / peak": f"{rss_start:.0f} / {m.peak_rss_mb:.0f}",
        f"listener RSS every {args.sample_every:g} s (s:MB)": ", ".join(f"{t:g}:{r:.0f}" for t, r in _thin(samples, 24)),
        "listener exit code": m.returncode,
        "store rows": store.rows(),
        "store MB": round(store.size_mb(), 1),
        "contents dropped (rotations)": len(rotations),
    }


def _wait_listening(started: list, log: Path, port: int, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = started[0]
    while time.monotonic() < deadline:
        if f"listening on 127.0.0.1:{port}" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the listener did not start: {log.read_text(errors='replace')[-2000:]}")


def _profiler(out: Path, pid: int):
    import subprocess

    py_spy = Path(sys.executable).with_name("py-spy")  # pip install py-spy
    return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--gil", "--format", "raw", "--rate", "100",
                             "--output", str(out.resolve())], stdout=subprocess.DEVNULL)


def _per_window(results: list[Sent], began: float, seconds: float) -> list[int]:
    """ACKs read in each full `seconds` window since the first message (the last, partial window left out)."""
    if not results:
        return []
    last = max(r.done_at for r in results)
    full = int((last - began) // seconds)
    counts = [0] * full
    for r in results:
        i = int((r.done_at - began) // seconds)
        if i < full:
            counts[i] += 1
    return counts


def _spread(counts: list[int]) -> str:
    if not counts:
        return "-"
    return f"{min(counts)}, {statistics.median(counts):g}, {max(counts)}"


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _thin(samples: list, most: int) -> list:
    step = max(1, -(-len(samples) // most))
    thinned = samples[::step]
    return thinned if thinned[-1] == samples[-1] else thinned + [samples[-1]]


def _show(value) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
