"""Benchmark helpers: a synthetic store (streamed into SQLite), the sandbox in its own process, and a
measured child process (wall time, CPU, peak RSS).

Everything is fictitious: test INS OID, generated names, PDFs of random words and scanned-like noise.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from connector import ins
from connector.actions.demo import SITES, config_text
from connector.store import dmp_document, dmp_patient, metadata

CLI = [sys.executable, "-m", "connector.cli"]
PDF_MIN, PDF_MAX = 50 * 1024, 1024 * 1024
CHUNK = 5000  # rows per executemany
TYPE_CODES = ("11490-0", "11488-4", "18748-4", "11502-2")
AUTHORS = (
    ("10001234567", "MARTIN", "Claire", "G15_10/SM26"),
    ("10009876543", "NGUYEN", "Thi Hương", "G15_10/SM44"),
    ("10004567890", "O'CONNOR", "Seán", "G15_10/SM04"),
    ("10007654321", "DUBOIS-LÉGER", "Anaïs", "G15_10/SM40"),
)
FAMILY = ("MARTIN", "BERNARD", "LEFÈVRE", "N'DIAYE", "GARÇON", "MÜLLER", "DA SILVA", "BENSAÏD", "NGUYEN", "ROUX")
GIVEN = {"M": ("Jean", "Mamadou", "Loïc", "Noé", "Karim"), "F": ("Zoé", "Inês", "Maëlle", "Anaïs", "Fatou")}
WORDS = ("patient", "examen", "clinique", "traitement", "antécédents", "bilan", "sortie", "consultation", "suivi",
         "imagerie", "biologie", "posologie", "allergie", "diagnostic", "conclusion", "tension", "fréquence", "normal")


# --- synthetic content ---------------------------------------------------------------------------


def pdf_size(rng: random.Random) -> int:
    """Log-uniform between 50 KB and 1 MB (mean ≈ 320 KB): many letters, few big scanned reports."""
    return int(PDF_MIN * (PDF_MAX / PDF_MIN) ** rng.random())


def synthetic_pdf(rng: random.Random, size: int) -> bytes:
    """A valid PDF of about `size` bytes: 1–3 pages of random words, then a page with a raw grayscale
    image of noise (the bulk, like a scanned page) sized so that the file reaches `size`."""
    objects: list[bytes] = [b"", b""]  # 1: catalog, 2: pages (written last, they list the kids)
    kids = []
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")  # 3
    for _ in range(rng.randint(1, 3)):
        lines = [" ".join(rng.choices(WORDS, k=10)) for _ in range(40)]
        text = "BT /F1 10 Tf 50 800 Td 12 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
        stream = text.encode("cp1252")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> "
                       b"/Contents %d 0 R >>" % (len(objects)))
        kids.append(len(objects))
    used = sum(len(o) for o in objects) + 600
    side = max(16, int(max(0, size - used) ** 0.5))
    image = rng.randbytes(side * side)
    objects.append(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                   b"/BitsPerComponent 8 /Length %d >>\nstream\n%s\nendstream" % (side, side, len(image), image))
    draw = b"q 595 0 0 842 0 0 cm /Im1 Do Q"
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(draw), draw))
    objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << /Im1 %d 0 R >> >> "
                   b"/Contents %d 0 R >>" % (len(objects) - 1, len(objects)))
    kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# --- synthetic store -----------------------------------------------------------------------------


def fictitious_nir(index: int) -> tuple[str, str, dt.date, str]:
    """(matricule with its verified key, sex, birth date, birth place COG) of fictitious patient `index`:
    the commune and order digits carry the index, so every patient has a distinct NIR."""
    sex = "12"[index % 2]
    year, month = 1930 + index % 90, 1 + index % 12
    department = f"{1 + (index // 999**2) % 19:02d}"  # 01..19 (never Corsica's 20): distinct up to 18.9 M patients
    commune, order = f"{1 + (index // 999) % 999:03d}", f"{1 + index % 999:03d}"
    nir13 = f"{sex}{year % 100:02d}{month:02d}{department}{commune}{order}"
    return f"{nir13}{ins.nir_key(nir13):02d}", {"1": "M", "2": "F"}[sex], dt.date(year, month, 1 + index % 28), department + commune


def patient_row(index: int) -> dict:
    matricule, sex, birth, place = fictitious_nir(index)
    rng = random.Random(index)
    family = rng.choice(FAMILY)
    given = " ".join(rng.sample(GIVEN[sex], 2))
    return dict(patient_id=f"P{index:07d}", ins_matricule=matricule, ins_oid=ins.INS_NIR_TEST, identity_status="QUAL",
                birth_family_name=family, birth_given_names=given, used_family_name=family,
                used_given_name=given.split()[0], sex=sex, birth_date=birth, birth_place_code=place,
                opposed_to_feeding=False, deceased_at=None)


def store_rows(n: int, seed: int, pool: int) -> Iterator[tuple[dict | None, dict]]:
    """(patient row or None, document row) for N documents, 1 to 5 per patient, streamed."""
    rng = random.Random(seed)
    base = dt.datetime(2026, 11, 1, 8, 0)
    made = 0
    for p in itertools.count():
        patient = patient_row(p)
        site = SITES[p % len(SITES)][0] if rng.random() < 0.9 else None  # most patients are seen at one site
        for k in range(min(rng.randint(1, 5), n - made)):
            created = base + dt.timedelta(minutes=rng.randrange(30 * 24 * 60))
            rpps, family, given, specialty = rng.choice(AUTHORS)
            yield (patient if k == 0 else None), dict(
                document_id=f"D{made:08d}", version=1, patient_id=patient["patient_id"],
                finess_geo=site or rng.choice(SITES)[0], type_code=rng.choice(TYPE_CODES),
                title="Compte rendu " + rng.choice(WORDS), created_at=created,
                service_start=created - dt.timedelta(days=rng.randint(0, 5), hours=2), service_stop=created - dt.timedelta(hours=1),
                author_rpps=rpps, author_family_name=family, author_given_name=given, author_specialty_code=specialty,
                legal_authenticator_rpps=rpps, status="VALIDATED", mime_type="application/pdf",
                content_path=f"documents/pool-{made % pool:05d}.pdf", content=None, mask_professionals=False,
                invisible_to_patient=False, invisible_to_legal_representatives=False,
                updated_at=created + dt.timedelta(minutes=5))
            made += 1
        if made >= n:
            return


@dataclass
class StoreInfo:
    path: Path
    documents: int = 0
    patients: int = 0
    pdf_files: int = 0
    pdf_bytes: int = 0
    seconds: float = 0.0


def create_store(directory: Path, n: int, *, seed: int = 7, pool: int = 500, journal: str = "delete") -> StoreInfo:
    """`directory/store.sqlite3` with N documents, and `min(N, pool)` distinct PDFs they point at (a shared
    pool keeps 100,000 documents on a laptop disk: a document's bytes are read and wrapped like any other)."""
    started = time.monotonic()
    docs_dir = directory / "documents"
    docs_dir.mkdir(parents=True, exist_ok=True)
    pool = max(1, min(n, pool))
    info = StoreInfo(directory / "store.sqlite3", pdf_files=pool)
    rng = random.Random(seed)
    for i in range(pool):
        body = synthetic_pdf(rng, pdf_size(rng))
        (docs_dir / f"pool-{i:05d}.pdf").write_bytes(body)
        info.pdf_bytes += len(body)
    info.path.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{info.path}")
    metadata.create_all(engine, tables=[dmp_patient, dmp_document])
    with engine.connect() as conn:  # persistent: "wal" lets the run's write-back commit while its scan reads
        conn.exec_driver_sql(f"PRAGMA journal_mode={journal}")
    rows = store_rows(n, seed, pool)
    with engine.begin() as conn:
        while chunk := list(itertools.islice(rows, CHUNK)):
            patients = [p for p, _ in chunk if p is not None]
            if patients:
                conn.execute(sa.insert(dmp_patient), patients)
            conn.execute(sa.insert(dmp_document), [d for _, d in chunk])
            info.documents += len(chunk)
            info.patients += len(patients)
    engine.dispose()
    info.seconds = time.monotonic() - started
    return info


def write_config(directory: Path, base_url: str, max_in_flight: int, schematron: str = "every",
                 engine: str = "python") -> Path:
    """The demo's configuration (store in ./store, PKI in ./pki, state in ./state) with the pool size, the
    validation.schematron mode and validation.engine."""
    text = config_text(base_url).replace('environment = "test"\n', f'environment = "test"\nmax_in_flight = {max_in_flight}\n')
    text += f'\n[validation]\nschematron = "{schematron}"\nengine = "{engine}"\n'
    path = directory / "dmp-connector.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """`dmp-connector sandbox serve` in its own process (it must not share the connector's CPU accounting)."""

    def __init__(self, directory: Path, *, latency_ms: int, fast: bool = True):
        self.port = free_port()
        self.state = directory / "sandbox.sqlite3"
        cmd = CLI + ["sandbox", "serve", "--port", str(self.port), "--pki", str(directory / "pki"),
                     "--state", str(self.state), "--latency-ms", str(latency_ms)] + (["--fast"] if fast else [])
        self.log = open(directory / "sandbox.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.started = time.monotonic()
        self.url = self._wait_listening()

    def _wait_listening(self, timeout: float = 120) -> str:
        line = self.proc.stdout.readline().decode()  # "sandbox DMP listening on https://…"
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"the sandbox did not start (see {self.log.name}): {line!r}")
        return line.rsplit(" ", 1)[-1].strip()

    def cpu_seconds(self) -> float:
        """User + system CPU of the sandbox so far (from /proc)."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Measured:
    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the child and of its own children (the schematron process)
    system_s: float  # of which system (the kernel: I/O, page faults, fsync)
    peak_rss_mb: float  # ru_maxrss: the largest of the child and its own children, each alone
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, RSS MB)
    tree_rss_samples: list[tuple[float, float]] = field(default_factory=list)  # the child + its children, summed
    stopped_after: float | None = None  # seconds, when a time limit interrupted it


def run_measured(cmd: list[str], *, log: Path, cwd: Path | None = None, stdout=None, time_limit: float | None = None,
                 sample_every: float = 5.0, on_start=None) -> Measured:
    """Run `cmd` and measure exactly that child: wall time, CPU and peak RSS through wait4 (not
    RUSAGE_CHILDREN, which would mix in every other child; wait4 counts the child's own children, e.g. the
    schematron process); RSS sampled from /proc along the way, of the child and of it with its children.
    With `time_limit`, SIGINT after that many seconds (the run then finishes its run record and stops).
    `on_start(proc)` is called once it runs (another thread may then drive and stop it: a server).
    The child's stderr goes to `log` (a pipe could fill up while we wait)."""
    started = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=stdout, stderr=err)
    if on_start is not None:
        on_start(proc)
    samples: list[tuple[float, float]] = []
    tree_samples: list[tuple[float, float]] = []
    stop = threading.Event()
    stopped = []

    def watch():
        while not stop.wait(sample_every):
            try:
                at, own = round(time.monotonic() - started, 1), rss_mb(proc.pid)
            except OSError:
                return
            samples.append((at, own))
            tree_samples.append((at, own + sum(rss_mb(child, missing=0.0) for child in _children(proc.pid))))
            if time_limit and time.monotonic() - started > time_limit and not stopped:
                stopped.append(round(time.monotonic() - started, 1))
                proc.send_signal(2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stop.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.stderr.write(Path(log).read_text(errors="replace")[-3000:])
    return Measured(proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_maxrss / 1024, samples,
                    tree_samples, stopped[0] if stopped else None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, missing: float | None = None) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        if missing is None:
            raise
        return missing
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def _children(pid: int) -> list[int]:
    try:
        direct = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []
    return direct + [grandchild for c in direct for grandchild in _children(c)]


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
