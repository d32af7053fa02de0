"""Files holding patient data are private whatever the umask: outside systemd (UMask=0077) a shell or cron gives
022, which made the state dir 0755, the ledger 0644 and exports (full CDAs, the VIHF) 0755/0644."""

import os
import stat

import pytest
from click.testing import CliRunner

from connector.actions import demo
from connector.cli import main
from connector.ledger.repo import open_ledger
from connector.runlock import run_lock


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_state_dir_and_a_new_ledger_are_owner_only(tmp_path, umask_022):
    state = tmp_path / "var" / "lib" / "dmp-connector"
    ledger = open_ledger(f"sqlite:///{state / 'ledger.sqlite3'}")
    with run_lock(ledger, state):
        ledger.start_run("run")
    assert _mode(state) == 0o700 and _mode(state.parent) == 0o700
    assert _mode(state / "ledger.sqlite3") == 0o600
    assert all(_mode(p) == 0o600 for p in state.glob("ledger.sqlite3-*"))  # WAL and shared memory follow the file


def test_exports_are_owner_only(tmp_path, umask_022):
    config = demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--all", "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert folders and _mode(out) == 0o700
    for folder in folders:
        assert _mode(folder) == 0o700
        assert all(_mode(f) == 0o600 for f in folder.iterdir())
