"""Retries across runs, on a fake clock (never a sleep): while the DMP's repository is down (HTTP 503; its
registry answers ITI-18), a submission is DEFERRED with a delay doubling from `deferred_min_minutes` to
`deferred_max_minutes`, is not sent before it is due, is FAILED `EXPIRED` after `lifetime_days`; then, the
repository back, `replay --reason EXPIRED` feeds it, once."""

from __future__ import annotations

import datetime as dt
import sys

from click.testing import CliRunner

import delivery_harness as h
from connector import config
from connector.actions import replay, run as run_action  # noqa: F401 (loaded before the clock is put in place)
from connector.cli import main
from connector.ledger import repo
from connector.sandbox import server as sandbox_server


class FakeClock:
    """The ledger's clock (`utcnow`, imported by name wherever it is used), moved by the test."""

    def __init__(self, monkeypatch):
        self.now = repo.utcnow()
        real = repo.utcnow
        for name, module in list(sys.modules.items()):
            if name.startswith("connector") and getattr(module, "utcnow", None) is real:
                monkeypatch.setattr(module, "utcnow", self)

    def __call__(self) -> dt.datetime:
        return self.now


class RepositoryDown:
    """The sandbox's repository answers 503 while `down`; its registry (ITI-18) keeps answering."""

    def __init__(self, monkeypatch):
        self.down, self.refused = True, 0
        original = sandbox_server.SandboxDmp.handle
        this = self

        def handle(app, path, content_type, body):
            if this.down and path == sandbox_server.REPOSITORY_PATH:
                this.refused += 1
                return sandbox_server.Reply(503, "text/html; charset=UTF-8", b"<html>maintenance</html>")
            return original(app, path, content_type, body)

        monkeypatch.setattr(sandbox_server.SandboxDmp, "handle", handle)


def _state(url: str):
    return h.ledger_rows(url, "SELECT d.state, d.reason, d.next_attempt_at, s.attempts FROM documents d"
                              " JOIN submissions s ON s.id = d.submission_id")[0]


def _at(value) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


def test_deferred_delay_doubles_to_its_cap_then_expires_and_replay_feeds_it_once(tmp_path, monkeypatch, pki):
    eligible = set(h.synthetic_store(tmp_path / "store", 1, seed=8))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    clock, dmp = FakeClock(monkeypatch), RepositoryDown(monkeypatch)
    start = clock.now
    with h.sandbox(folder) as sb:
        settings = config.load(folder.configure(sb.url, **{"dmp.retry": {
            "in_run_attempts": 1, "deferred_min_minutes": 15, "deferred_max_minutes": 60, "lifetime_days": 1}}))
        url = folder.ledger_url

        def run_at(minutes: float) -> None:
            clock.now = start + dt.timedelta(minutes=minutes)
            run_action.run(settings)

        schedule = []  # (minutes since start of each attempt, delay until the next one in minutes)
        for at in (0, 15, 45, 105, 165):
            if at:
                run_at(at - 1)  # a minute before it is due: not sent
                assert dmp.refused == len(schedule) and _state(url).state == "DEFERRED"
            run_at(at)
            state = _state(url)
            assert dmp.refused == len(schedule) + 1 and (state.state, state.reason) == ("DEFERRED", "TRANSIENT_ERROR")
            schedule.append((at, (_at(state.next_attempt_at) - clock.now) / dt.timedelta(minutes=1)))
        assert schedule == [(0, 15), (15, 30), (45, 60), (105, 60), (165, 60)]  # 15, 30, 60 then capped at 60

        run_at(24 * 60)  # due again, a day after the first attempt: this failure is the last
        state = _state(url)
        assert (state.state, state.reason, state.attempts) == ("FAILED", "EXPIRED", 6) and dmp.refused == 6
        run_at(3 * 24 * 60)  # FAILED is never retried by a run
        assert dmp.refused == 6 and _state(url).state == "FAILED"

        dmp.down = False  # the repository is back
        out = CliRunner().invoke(main, ["replay", "--reason", "EXPIRED", "--config", str(folder.cfg)])
        assert out.exit_code == 0, out.output
        assert f"{sorted(eligible)[0][0]} v1: FED" in out.output
        CliRunner().invoke(main, ["run", "--config", str(folder.cfg)])  # nothing more to do
    h.assert_exactly_once(folder, eligible)
    assert dmp.refused == 6
