"""The HL7 intake's figures (issue 19 item 6): what the listener counts (messages accepted, resent, refused by
ACK code and ERR code, and their ACK latency) is written to the store every `intake.hl7.figures_interval_seconds`
with a heartbeat (`dmp_intake_figures`, `dmp_intake_listener`, see writer.py), so `status`, `status --check` and
Prometheus read them from any process. A listener killed loses at most one interval of figures, never a message.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from types import SimpleNamespace

import sqlalchemy as sa

from connector.intake.writer import intake_figures, intake_listener

log = logging.getLogger("connector.intake")

BUCKETS_MS = (10, 50, 200, 1000, 5000)  # ACK latency histogram: upper bounds (ms); above the last: only in the sum
ACCEPTED, RESEND = "accepted", "resend"
FOLDER = "folder:"  # the drop folder's outcomes and watchers (connector/intake/folder.py) carry this prefix


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Recorder:
    """Counts in memory (from the listener's worker threads), written by `flush` (the listener's timer)."""

    def __init__(self, engine: sa.engine.Engine, instance: str, clock=utcnow):
        self.engine, self.instance, self.clock = engine, instance, clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[dt.datetime, str], list[float]] = {}  # (hour, outcome) -> [n, sum, buckets…]
        self.started_at = clock()

    def count(self, outcome: str, latency_ms: float) -> None:
        hour = self.clock().replace(minute=0, second=0, microsecond=0)
        with self._lock:
            row = self._pending.setdefault((hour, outcome), [0, 0.0] + [0] * len(BUCKETS_MS))
            row[0] += 1
            row[1] += latency_ms
            for i, bound in enumerate(BUCKETS_MS):
                if latency_ms <= bound:
                    row[2 + i] += 1

    def flush(self, *, stopping: bool = False, heartbeat: bool = True) -> None:
        """Add what was counted since the last flush to the store's figures and beat the heartbeat (or record the
        stop), in one transaction. On a store error the counts wait for the next flush (logged, never raised).
        Without `heartbeat` (a single sweep of `intake folder --once`), the figures only."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                for (hour, outcome), row in sorted(pending.items()):
                    _add(conn, hour, outcome, row)
                if not heartbeat:
                    return
                beat = dict(seen_at=now, stopped_at=now if stopping else None)
                if not conn.execute(sa.update(intake_listener).where(intake_listener.c.instance == self.instance)
                                    .values(**beat)).rowcount:
                    conn.execute(sa.insert(intake_listener).values(instance=self.instance, started_at=self.started_at,
                                                                   **beat))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("intake hl7: figures not written (kept for the next time): %s",
                        type(getattr(exc, "orig", exc)).__name__)
            with self._lock:
                for key, row in pending.items():
                    mine = self._pending.setdefault(key, [0, 0.0] + [0] * len(BUCKETS_MS))
                    for i, value in enumerate(row):
                        mine[i] += value

    def start(self) -> None:
        """A (re)started listener: its row says so (started now, running)."""
        now = self.clock()
        self.started_at = now
        with self.engine.begin() as conn:
            values = dict(started_at=now, seen_at=now, stopped_at=None)
            if not conn.execute(sa.update(intake_listener).where(intake_listener.c.instance == self.instance)
                                .values(**values)).rowcount:
                conn.execute(sa.insert(intake_listener).values(instance=self.instance, **values))


def _add(conn, hour: dt.datetime, outcome: str, row: list[float]) -> None:
    f = intake_figures.c
    buckets = {f"le_{bound}": int(row[2 + i]) for i, bound in enumerate(BUCKETS_MS)}
    updated = conn.execute(sa.update(intake_figures).where(f.hour == hour, f.outcome == outcome).values(
        messages=f.messages + int(row[0]), latency_ms_sum=f.latency_ms_sum + row[1],
        **{name: getattr(f, name) + n for name, n in buckets.items()})).rowcount
    if not updated:
        conn.execute(sa.insert(intake_figures).values(hour=hour, outcome=outcome, messages=int(row[0]),
                                                      latency_ms_sum=row[1], **buckets))


def collect(url: str, *, now: dt.datetime | None = None) -> dict | None:
    """The intake's figures for `status`, from the store at `url`; None when it has no intake tables (no intake
    ever ran there). Raises sqlalchemy errors (the caller says the figures are unavailable)."""
    now = now or utcnow()
    # status must answer even when the store is down (monitoring waits on it): a PostgreSQL store gets 5 s
    engine = sa.create_engine(url, future=True, connect_args={"connect_timeout": 5} if url.startswith("postgres") else {})
    try:
        if not sa.inspect(engine).has_table(intake_listener.name):
            return None
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        f = intake_figures.c
        with engine.connect() as conn:
            listeners = [dict(r._mapping) for r in conn.execute(sa.select(intake_listener)
                                                                 .order_by(intake_listener.c.instance))]
            rows = conn.execute(sa.select(f.hour, f.outcome, f.messages, f.latency_ms_sum,
                                          *(getattr(f, f"le_{b}") for b in BUCKETS_MS))).all()
    finally:
        engine.dispose()
    hl7 = {"listeners": [r for r in listeners if not r["instance"].startswith(FOLDER)],
           **_periods([r for r in rows if not r.outcome.startswith(FOLDER)], this_hour)}
    folder_rows = [SimpleNamespace(**dict(r._mapping, outcome=r.outcome[len(FOLDER):]))
                   for r in rows if r.outcome.startswith(FOLDER)]
    watchers = [dict(r, instance=r["instance"][len(FOLDER):]) for r in listeners if r["instance"].startswith(FOLDER)]
    if folder_rows or watchers:
        hl7["folder"] = {"watchers": watchers, **_periods(folder_rows, this_hour)}
    return hl7


def _periods(rows, this_hour: dt.datetime) -> dict:
    total, last_hour, hour_before, day = _Sums(), _Sums(), _Sums(), _Sums()
    for r in rows:
        total.add(r)
        if r.hour >= this_hour:
            last_hour.add(r)
        elif r.hour >= this_hour - dt.timedelta(hours=1):
            hour_before.add(r)
        if r.hour >= this_hour - dt.timedelta(hours=23):
            day.add(r)
    return {"this_hour": last_hour.as_dict(), "previous_hour": hour_before.as_dict(), "last_24h": day.as_dict(),
            "total": total.as_dict()}


class _Sums:
    def __init__(self):
        self.by_outcome: dict[str, int] = {}
        self.latency_ms_sum = 0.0
        self.buckets = [0] * len(BUCKETS_MS)

    def add(self, r) -> None:
        self.by_outcome[r.outcome] = self.by_outcome.get(r.outcome, 0) + r.messages
        self.latency_ms_sum += r.latency_ms_sum
        for i, bound in enumerate(BUCKETS_MS):
            self.buckets[i] += getattr(r, f"le_{bound}")

    def as_dict(self) -> dict:
        messages = sum(self.by_outcome.values())
        refused = {k: n for k, n in sorted(self.by_outcome.items()) if k not in (ACCEPTED, RESEND)}
        return {"messages": messages, "accepted": self.by_outcome.get(ACCEPTED, 0),
                "resends": self.by_outcome.get(RESEND, 0), "refused": sum(refused.values()),
                "refused_by_code": refused, "ack_latency_ms_sum": round(self.latency_ms_sum, 1),
                "ack_latency_ms_buckets": {str(b): n for b, n in zip(BUCKETS_MS, self.buckets)},
                "ack_latency_ms_p50": _quantile(self.buckets, messages, 0.5),
                "ack_latency_ms_p99": _quantile(self.buckets, messages, 0.99)}


def _quantile(buckets: list[int], messages: int, q: float) -> int | None:
    """The histogram's upper bound (ms) at or under which a share `q` of the messages were acknowledged; None
    without messages, -1 when above the last bound (5000 ms)."""
    if not messages:
        return None
    for bound, n in zip(BUCKETS_MS, buckets):
        if n >= q * messages:
            return bound
    return -1
