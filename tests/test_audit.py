"""Audit trail (EXI 16): export round-trips in CSV and JSON over a period; purge respects the retention."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import delivery_harness as h
from connector.actions import audit
from connector.cli import main
from connector.ledger.repo import open_ledger
from connector.ledger.schema import audit as audit_table

NOW = dt.datetime(2026, 11, 20, 12, 0, 0)


@pytest.fixture
def ledger(tmp_path):
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    rows = [
        dict(at=NOW - dt.timedelta(days=200), run_id=1, action="ITI-41", finess_geo="0B0999998", rpps="10001234567",
             submission_set_uid="1.2.3.1", document_ids="DOC-OLD:1", outcome="accepted"),
        dict(at=NOW - dt.timedelta(days=2, hours=3), run_id=7, action="ITI-41", finess_geo="0B0999998",
             rpps="10001234567", submission_set_uid="1.2.3.2", document_ids="DOC-1:1,DOC-2:3", outcome="accepted",
             message="Success"),
        dict(at=NOW - dt.timedelta(days=1), run_id=8, action="ITI-18", finess_geo="0B0999997", rpps=None,
             submission_set_uid="1.2.3.3", document_ids="DOC-3:1", outcome="not_found"),
        dict(at=NOW - dt.timedelta(days=1) + dt.timedelta(minutes=5), run_id=8, action="ITI-41", finess_geo="0B0999997",
             rpps="10009876543", submission_set_uid="1.2.3.3", document_ids="DOC-3:1", outcome="permanent",
             error_code="XDSUnknownPatientId", message="Patient inconnu, « accents », virgule, \"quotes\"\nline 2"),
    ]
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(audit_table), rows)
    return ledger


def _expected(ledger, since=None, until=None):
    with ledger.engine.connect() as conn:
        q = sa.select(audit_table).order_by(audit_table.c.at)
        q = q.where(audit_table.c.at >= since) if since else q
        q = q.where(audit_table.c.at < until) if until else q
        return [dict(r._mapping) for r in conn.execute(q)]


def _typed(row: dict) -> dict:
    """CSV text back to the ledger's types."""
    out = {k: (v if v != "" else None) for k, v in row.items()}
    out["id"] = int(out["id"])
    out["run_id"] = int(out["run_id"]) if out["run_id"] else None
    at = dt.datetime.fromisoformat(out["at"])
    assert at.utcoffset() == dt.timedelta(0), "every time carries its zone (UTC)"
    out["at"] = at.replace(tzinfo=None)
    return out


def test_csv_round_trip_over_a_period(ledger):
    since, until = audit.parse_when("2026-11-18"), audit.parse_when("2026-11-19", end=True)
    buf = io.StringIO()
    n = audit.export(ledger, buf, fmt="csv", since=since, until=until)
    back = [_typed(r) for r in csv.DictReader(io.StringIO(buf.getvalue()))]
    expected = _expected(ledger, since, until)
    assert n == len(back) == 3
    assert back == expected


def test_json_round_trip(ledger):
    buf = io.StringIO()
    assert audit.export(ledger, buf, fmt="json") == 4
    back = json.loads(buf.getvalue())
    for row in back:
        assert row["at"].endswith("+00:00")
        row["at"] = dt.datetime.fromisoformat(row["at"]).replace(tzinfo=None)
    assert back == _expected(ledger)


def test_empty_period_is_valid_json(ledger):
    buf = io.StringIO()
    assert audit.export(ledger, buf, fmt="json", since=NOW + dt.timedelta(days=1)) == 0
    assert json.loads(buf.getvalue()) == []


def test_parse_when():
    assert audit.parse_when("2026-11-20") == dt.datetime(2026, 11, 20)
    assert audit.parse_when("2026-11-20", end=True) == dt.datetime(2026, 11, 21)
    assert audit.parse_when("2026-11-20T10:00:00+01:00") == dt.datetime(2026, 11, 20, 9, 0)
    with pytest.raises(ValueError):
        audit.parse_when("20/11/2026")


def test_purge_respects_the_retention(ledger):
    assert audit.purge(ledger, 183, now=NOW) == 1  # only the 200-day-old entry
    assert [r["submission_set_uid"] for r in _expected(ledger)] == ["1.2.3.2", "1.2.3.3", "1.2.3.3"]
    assert audit.purge(ledger, 183, now=NOW) == 0
    assert audit.purge(ledger, 2, now=NOW) == 1  # 2 days 3 hours old: past a 2-day retention; 1 day old is kept
    assert len(_expected(ledger)) == 2


def test_cli_export_to_file(ledger, tmp_path):
    config = h.write_config(tmp_path / "c.toml", **h.NO_PKI, ledger={"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"})
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(main, ["audit", "export", "--config", str(config), "--since", "2026-11-19",
                                       "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["submission_set_uid"] for r in rows] == ["1.2.3.3", "1.2.3.3"]
    bad = CliRunner().invoke(main, ["audit", "export", "--config", str(config), "--since", "19/11/2026"])
    assert bad.exit_code == 2
