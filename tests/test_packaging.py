"""What an operator installs comes from the package itself: `dmp-connector files` lists, prints and copies the
systemd units, config.example.toml and README.md it ships (pyproject's package data: connector/dist); the units'
Documentation= is where the README's installation puts that README; `db upgrade` says what it did."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

import delivery_harness as h
from connector.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["README.md", "config.example.toml", "dmp-connector-intake-folder.service", "dmp-connector-intake.service",
           "dmp-connector-run-prometheus.conf",
           "dmp-connector-run.service",
           "dmp-connector-run.timer", "dmp-connector.service"]


def test_files_lists_prints_and_copies_what_the_package_ships(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["files"]).output.split() == SHIPPED
    timer = runner.invoke(main, ["files", "dmp-connector-run.timer"])
    assert timer.exit_code == 0 and timer.output == (ROOT / "systemd" / "dmp-connector-run.timer").read_text()
    example = runner.invoke(main, ["files", "config.example.toml"])
    assert example.output == (ROOT / "config.example.toml").read_text()
    copied = runner.invoke(main, ["files", "--to", str(tmp_path / "units"), "dmp-connector-run.service",
                                  "dmp-connector-run.timer"])
    assert copied.exit_code == 0 and sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "dmp-connector-run.service", "dmp-connector-run.timer"]
    assert runner.invoke(main, ["files", "nope.service"]).exit_code == 2
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "dist/*" in package_data["connector"]
    for unit in ("dmp-connector-run.service", "dmp-connector.service"):
        text = (ROOT / "systemd" / unit).read_text()
        assert "Documentation=file:///usr/share/doc/dmp-connector/README.md" in text
    readme = (ROOT / "README.md").read_text()
    assert "dmp-connector files README.md > /usr/share/doc/dmp-connector/README.md" in readme


def test_db_upgrade_says_what_it_did(tmp_path):
    cfg = h.write_config(tmp_path / "c.toml", **h.NO_PKI)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--config", str(cfg)])
    assert first.exit_code == 0 and ": created at schema " in first.output, first.output
    again = runner.invoke(main, ["db", "upgrade", "--config", str(cfg)])
    assert again.exit_code == 0 and ": nothing to do" in again.output
