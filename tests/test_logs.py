"""Log lines for journald and log shippers: JSON lines carry the submission's fields; under journald
(JOURNAL_STREAM names stderr) every line starts with its syslog priority, so `journalctl -p warning` works."""

from __future__ import annotations

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
    out = open(tmp_path / "stderr.log", "w+", encoding="utf-8")
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
