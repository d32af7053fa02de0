"""The shipped systemd units: `systemd-analyze verify` is clean and `systemd-analyze security --offline=true`
rates each service's exposure at most 2.0. systemd-analyze is required: its absence FAILS (never skips)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED = "/opt/dmp-connector/bin/dmp-connector"  # the ExecStart path of the README's install
NAMES = ("dmp-connector.service", "dmp-connector-run.service", "dmp-connector-run.timer", "dmp-connector-intake.service",
         "dmp-connector-intake-folder.service")


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is required for these tests (Debian: apt-get install systemd)")
    return path


@pytest.fixture
def unit_dir(tmp_path):
    """The units, with ExecStart pointing at an executable that exists (verify checks it)."""
    fake = tmp_path / "bin" / "dmp-connector"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    for name in NAMES:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED, str(fake)))
    return tmp_path


@pytest.mark.parametrize("name", NAMES)
def test_verify(unit_dir, name):
    result = subprocess.run([_analyze(), "verify", f"./{name}"], cwd=unit_dir, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze verify warnings:\n{result.stderr}"


@pytest.mark.parametrize("name", NAMES[:2] + NAMES[3:])
def test_security_exposure(unit_dir, name):
    result = subprocess.run([_analyze(), "security", "--offline=true", f"./{name}"], cwd=unit_dir,
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_units_are_commented_and_hardened():
    service = (UNITS / "dmp-connector.service").read_text()
    for setting in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                    "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "MemoryDenyWriteExecute=yes",
                    "SystemCallFilter=@system-service", "RestrictNamespaces=yes", "StateDirectory=dmp-connector",
                    "LoadCredential=auth_cli.pass:", "LoadCredential=sign.pass:", "UMask=0077"):
        assert setting in service, setting
    timer = (UNITS / "dmp-connector-run.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer and "OnCalendar=*-*-* 02:00" in timer
    assert "Type=oneshot" in (UNITS / "dmp-connector-run.service").read_text()


def test_prometheus_drop_in_verifies_and_runs_after_failed_runs_too(unit_dir):
    """The shipped drop-in writes the metrics after every run (ExecStopPost=: after a failed one too), through
    ProtectSystem=strict (ReadWritePaths= of the collector's folder only); a run that needs a human fails the unit
    (only exit 5, the lock held, is a success), so that OnFailure= fires."""
    text = (UNITS / "dmp-connector-run-prometheus.conf").read_text()
    assert "ExecStopPost=" + INSTALLED + " status --prometheus " in text and "ExecStartPost" not in text.replace(
        "ExecStartPost= would", "")
    assert "ReadWritePaths=/var/lib/prometheus/node-exporter" in text
    drop_in = unit_dir / "dmp-connector-run.service.d"
    drop_in.mkdir()
    (drop_in / "prometheus.conf").write_text(text.replace(INSTALLED, str(unit_dir / "bin" / "dmp-connector")))
    result = subprocess.run([_analyze(), "verify", "./dmp-connector-run.service"], cwd=unit_dir, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    service = (UNITS / "dmp-connector-run.service").read_text()
    assert "\nSuccessExitStatus=5\n" in service
