"""Log lines for journald and log shippers: JSON lines carry the submission's fields; under journald
(JOURNAL_STREAM names stderr) every line starts with its syslog priority, so `journalctl -p warning` works."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from connector import logs


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _setup_on_file(tmp_path, monkeypatch, *, journal: bool, json_lines: bool):
    out = open(tmp_path / "stderr.log", "w+", encoding="utf-8", newline="")  # keep the \r of a terminal
    monkeypatch.setattr("sys.stderr", out)
    st = os.fstat(out.fileno())
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    else:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # another stream (a shell started from a unit): no prefix
    logs.setup("INFO", json_lines)
    return out


def _lines(out) -> list[str]:
    out.flush()
    out.seek(0)
    return out.read().splitlines()


def test_journal_priority_prefix_on_every_line(tmp_path, monkeypatch):
    out = _setup_on_file(tmp_path, monkeypatch, journal=True, json_lines=False)
    log = logging.getLogger("connector.test")
    log.info("fed")
    log.warning("deferred")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = _lines(out)
    assert lines[0].startswith("<6>") and " INFO connector.test: fed" in lines[0]
    assert lines[1].startswith("<4>") and lines[2].startswith("<3>")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[2:]), "a traceback's lines too"
    assert not any(line != line.rstrip() for line in lines), "no trailing spaces"


def test_no_prefix_off_the_journal_and_json_fields(tmp_path, monkeypatch):
    out = _setup_on_file(tmp_path, monkeypatch, journal=False, json_lines=True)
    logging.getLogger("connector.deliver").warning(
        "submission %s: DEFERRED", "1.2.3", extra=dict(run_id=7, submission="1.2.3", outcome="transient",
                                                      error_code="DMP_UNREACHABLE", state="DEFERRED"))
    (line,) = _lines(out)
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["time"].endswith("Z")
    assert {k: entry[k] for k in logs.FIELDS} == {"run_id": 7, "submission": "1.2.3", "outcome": "transient",
                                                  "error_code": "DMP_UNREACHABLE", "state": "DEFERRED"}


class _Summary:
    def __init__(self):
        import collections

        self.run_id, self.counts, self.skipped = 3, collections.Counter(fed=40, deferred=2), collections.Counter(X=8)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_off_a_terminal_logs_total_percent_rate_and_eta_every_interval(caplog):
    clock, summary = _Clock(), _Summary()
    progress = logs.RunProgress(tty=False, interval=30, clock=clock, stream=io.StringIO())
    progress.begin(200)
    with caplog.at_level(logging.INFO, logger="connector.run"):
        progress.patient(summary)
        progress.scanned(50)
        clock.now += 10
        progress.settled(summary)  # within the interval: nothing
        assert caplog.records == []
        clock.now += 40  # 50 documents in 50 s: 1/s, 150 left
        progress.settled(summary)
    (record,) = caplog.records
    assert record.getMessage() == ("run 3: 50/200 documents (25%), 1.0/s, ETA 0:02:30; 1 patients, 40 fed, "
                                   "2 deferred, 0 failed, 8 skipped")


def test_progress_bar_on_a_terminal_with_log_lines_printed_above_it(tmp_path, monkeypatch):
    out = _setup_on_file(tmp_path, monkeypatch, journal=False, json_lines=False)
    clock, summary = _Clock(), _Summary()
    progress = logs.RunProgress(tty=True, clock=clock, stream=out)
    progress.begin(100)
    progress.patient(summary)
    progress.scanned(50)
    clock.now += 25
    progress.settled(summary)
    logging.getLogger("connector.deliver").warning("submission 1.2.3: DEFERRED")
    progress.close(summary)
    out.flush()
    out.seek(0)
    raw = out.read()
    bar = "[############............] 50/100 documents (50%), 2.0/s, ETA 0:00:25 | 40 fed, 2 deferred, 0 failed"
    # the bar, then the line erased, the log line, the bar again below it; erased at the end for the summary
    first, rest = raw.split("\r\033[K", 2)[1:]
    assert first == bar
    log_line, bar_again = rest.split("\n", 1)
    assert log_line.endswith("WARNING connector.deliver: submission 1.2.3: DEFERRED")
    assert bar_again == f"\r\033[K{bar}\r\033[K"
