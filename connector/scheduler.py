"""`dmp-connector daemon`: the run on the configured cron schedule (APScheduler 3, in-memory job store).

- misfire_grace_time = 1 h: a run whose time passed while the host was suspended, rebooting or busy still
  starts if it is less than an hour late (APScheduler's default of 1 s would silently skip it); later than that,
  it is logged as missed and the next night's run catches up (the scan is not incremental: nothing is lost).
- coalesce: several missed fire times give one run, not a burst; max_instances=1: never two runs at once
  (the run lock also guards against a `run` started by hand: that night is then logged and skipped).
- SIGTERM/SIGINT: the run in flight takes no new patient, its submissions already with the senders finish,
  then the scheduler stops. Whatever is still open is settled by the next run (write-ahead ledger).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from connector.config import ConfigError, Settings
from connector.logs import RunProgress, StopRequested
from connector.runlock import AlreadyRunning

log = logging.getLogger("connector.daemon")

JOB_ID = "run"
MISFIRE_GRACE_SECONDS = 3600


def trigger(settings: Settings) -> CronTrigger:
    try:
        tz = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"schedule.timezone: unknown time zone {settings.timezone!r}") from None
    try:
        return CronTrigger.from_crontab(settings.schedule, timezone=tz)
    except ValueError as exc:
        raise ConfigError(f"schedule.cron: {settings.schedule!r} is not a 5-field cron expression ({exc})") from None


def run_once(settings: Settings, stop: threading.Event | None = None) -> None:
    """The scheduled job: one run; its failures are logged, never fatal to the daemon."""
    from connector.actions import run as run_action

    try:
        summary = run_action.run(settings, progress=RunProgress(stop=stop))
    except AlreadyRunning as exc:
        log.warning("scheduled run skipped: %s", exc)
    except StopRequested:
        log.info("run stopped on request; the next run settles what it left open")
    except Exception:
        log.exception("scheduled run failed; the daemon keeps its schedule")
    else:
        # the run logged its summary and what needs a human; the exit code it would have had, for the journal
        log.log(logging.INFO if summary.exit_code == 0 else logging.WARNING, "scheduled run %d ended with code %d "
                "(%s)", summary.run_id, summary.exit_code, "; ".join(summary.attention) or summary.status)


def build(settings: Settings, *, stop: threading.Event | None = None, job=None, run_now: bool = False,
          scheduler_class: type[BaseScheduler] = BlockingScheduler) -> BaseScheduler:
    """A scheduler holding the run job on the configured trigger (not started)."""
    cron = trigger(settings)
    scheduler = scheduler_class(timezone=cron.timezone)
    scheduler.add_job(job or run_once, cron, args=() if job else (settings, stop), id=JOB_ID, name="dmp-connector run",
                      misfire_grace_time=MISFIRE_GRACE_SECONDS, coalesce=True, max_instances=1,
                      **({"next_run_time": dt.datetime.now(cron.timezone)} if run_now else {}))

    def after(event) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("run due at %s was missed (more than %d s late); waiting for the next one",
                        event.scheduled_run_time, MISFIRE_GRACE_SECONDS)
        if stop is None or not stop.is_set():  # from the trigger: the scheduler's locks are held during shutdown
            log.info("next run at %s", cron.get_next_fire_time(None, dt.datetime.now(cron.timezone)).isoformat())

    scheduler.add_listener(after, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler


def daemon(settings: Settings, *, run_now: bool = False) -> None:
    """Run on the schedule until SIGTERM or SIGINT (blocks)."""
    stop = threading.Event()
    scheduler = build(settings, stop=stop, run_now=run_now)
    cron = trigger(settings)

    def on_signal(signum, _frame) -> None:
        if stop.is_set():
            return
        stop.set()
        log.info("%s: stopping; a run in flight finishes its current submissions first", signal.Signals(signum).name)
        scheduler.shutdown(wait=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        first = dt.datetime.now(cron.timezone) if run_now else cron.get_next_fire_time(None, dt.datetime.now(cron.timezone))
        log.info("daemon started: schedule %r (%s), next run at %s", settings.schedule, settings.timezone, first.isoformat())
        scheduler.start()  # blocks until shutdown
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("daemon stopped")
