"""A ledger that is interrupted, lost, moved, damaged or out of reach: the next command either works or says, in
one line with the documented exit code, what is wrong; it never starts over silently (which would feed again)."""

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from connector.ledger import migrate
from connector.ledger.repo import LedgerError, open_ledger
from connector.ledger.schema import metadata

OUR_TABLES = set(metadata.tables)


def _url(request, tmp_path, dialect: str) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _ddl_statements(url: str) -> int:
    """How many DDL statements a first migration to head executes (in a scratch database of the same kind)."""
    count = 0

    def counter(conn, cursor, statement, *args):
        nonlocal count
        count += statement.lstrip().upper().startswith(("CREATE", "DROP", "ALTER"))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", counter)
    try:
        open_ledger(url, auto_migrate=True).engine.dispose()
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", counter)
    return count


class InjectedFailure(RuntimeError):
    pass


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_migration_failing_at_any_statement_leaves_nothing_and_the_next_start_works(request, tmp_path, dialect):
    """Each DDL statement of the first migration fails in turn: the failed start leaves no table behind (one
    transaction for the whole upgrade), and the next start migrates to head."""
    scratch = f"sqlite:///{tmp_path / 'scratch.sqlite3'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")
    total = _ddl_statements(scratch)
    assert total >= 10
    for nth in range(1, total + 1):
        url = f"sqlite:///{tmp_path / f'ledger-{nth}.sqlite3'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")
        if dialect == "postgresql":  # the same fresh schema each time: drop what the scratch run made
            with sa.create_engine(url).begin() as conn:
                for table in ("alembic_version", *OUR_TABLES):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
        seen = 0

        def fail_nth(conn, cursor, statement, *args):
            nonlocal seen
            if statement.lstrip().upper().startswith(("CREATE", "DROP", "ALTER")):
                seen += 1
                if seen == nth:
                    raise InjectedFailure(f"DDL statement {nth}")

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", fail_nth)
        try:
            with pytest.raises((InjectedFailure, LedgerError)):
                open_ledger(url, auto_migrate=True)
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", fail_nth)
        assert not _tables(url) & (OUR_TABLES | {"alembic_version"}), f"statement {nth} left tables behind"
        ledger = open_ledger(url, auto_migrate=True)
        assert migrate.current(ledger.engine) == migrate.head()
        ledger.engine.dispose()


@pytest.mark.parametrize("step", range(1, int(migrate.head()) + 1))
def test_killed_during_the_first_automatic_migration_the_next_command_works(tmp_path, step):
    """SIGKILL (no cleanup at all) after each migration step of a first start: the next start works."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    code = f"from connector.ledger.repo import open_ledger; open_ledger({url!r})"
    env = {**os.environ, "DMP_CONNECTOR_CRASH_AT": f"migration_step:{step}"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not _tables(url) & OUR_TABLES
    ledger = open_ledger(url)
    assert migrate.current(ledger.engine) == migrate.head()
    ledger.engine.dispose()


def test_tables_without_a_schema_version_are_repaired_when_empty_and_refused_otherwise(tmp_path):
    """What an interrupted migration of an earlier version left (tables, no alembic_version): empty, it is
    cleared and migrated; holding rows, it is refused with what to do, never migrated over."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    open_ledger(url).engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
    open_ledger(url).engine.dispose()  # empty: repaired
    assert migrate.current(engine) == migrate.head()
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("INSERT INTO runs (mode, status, started_at) VALUES ('run', 'done', '2026-11-20 01:00:00')")
    with pytest.raises(LedgerError, match="no schema version"):
        open_ledger(url)
    engine.dispose()


# --- a lost or moved ledger ---------------------------------------------------------------------------------

import delivery_harness as h  # noqa: E402
from connector.cli import EXIT_CONFIG, EXIT_UNAVAILABLE  # noqa: E402


def _one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_a_new_ledger_over_a_store_already_fed_is_refused_then_rebuilt_from_dmp_feed_status(tmp_path, pki):
    eligible = set(h.synthetic_store(tmp_path / "store", 6, seed=4, per_patient=(1, 3)))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        h.run_until_done(folder.cfg)
        h.assert_exactly_once(folder, eligible)
        # the state directory moved (or was lost): a new, empty ledger
        folder.configure(sb.url, ledger={"url": f"sqlite:///{tmp_path / 'moved' / 'ledger.sqlite3'}"})
        check = h.run_cli(folder.cfg, "check")  # no ledger there at all: check says what it means
        assert check.returncode == 1 and "[FAIL] ledger" in check.stdout and "db rebuild" in check.stdout
        refused = h.run_cli(folder.cfg)
        assert refused.returncode == EXIT_UNAVAILABLE, refused.stderr[-3000:]
        line = _one_line_error(refused)
        assert "dmp_feed_status" in line and "db rebuild" in line
        assert h.received(folder)["documents"] == len(eligible)  # nothing sent again
        assert not h.ledger_rows(folder.ledger_url, "SELECT id FROM runs")  # nor recorded
        check = h.run_cli(folder.cfg, "check")  # an empty ledger now (the refused run made it): the same
        assert check.returncode == 1 and "[FAIL] ledger" in check.stdout and "db rebuild" in check.stdout
        rebuilt = h.run_cli(folder.cfg, "db", "rebuild")
        assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
        assert f"{len(eligible)} document(s) recorded FED" in rebuilt.stdout
        again = h.run_cli(folder.cfg, "db", "rebuild")  # only ever on a ledger that has fed nothing
        assert again.returncode == EXIT_UNAVAILABLE and "already" in _one_line_error(again)
        # rebuilt where there is no ledger yet (no run first): it is made there
        folder.configure(sb.url, ledger={"url": f"sqlite:///{tmp_path / 'elsewhere' / 'ledger.sqlite3'}"})
        fresh = h.run_cli(folder.cfg, "db", "rebuild")
        assert fresh.returncode == 0 and f"{len(eligible)} document(s) recorded FED" in fresh.stdout, fresh.stderr
        folder.configure(sb.url, ledger={"url": f"sqlite:///{tmp_path / 'moved' / 'ledger.sqlite3'}"})
        h.run_until_done(folder.cfg)
    h.assert_exactly_once(folder, eligible)
    states = h.ledger_states(folder.ledger_url)
    assert {states[k] for k in eligible} == {("FED", None)}
    unique_ids = {r.unique_id for r in h.ledger_rows(folder.ledger_url, "SELECT unique_id FROM documents")}
    assert unique_ids == set(h.received_uids(folder))  # the DMP's ids, as dmp_feed_status recorded them


def _status(cfg) -> "subprocess.CompletedProcess":
    return h.run_cli(cfg, "status")


def _folder_with_ledger(tmp_path, url: str, pki) -> h.Folder:
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    folder.configure(h.PLACEHOLDER_URL, ledger={"url": url})
    return folder


def test_an_empty_file_is_not_a_ledger(tmp_path, pki):
    (tmp_path / "empty.sqlite3").touch()
    folder = _folder_with_ledger(tmp_path, f"sqlite:///{tmp_path / 'empty.sqlite3'}", pki)
    result = _status(folder.cfg)
    assert result.returncode == EXIT_UNAVAILABLE
    assert "empty" in _one_line_error(result)
    assert (tmp_path / "empty.sqlite3").stat().st_size == 0  # left as it was


def test_a_corrupted_ledger_is_one_clear_line(tmp_path, pki):
    (tmp_path / "garbage.sqlite3").write_bytes(bytes(range(256)) * 40)
    folder = _folder_with_ledger(tmp_path, f"sqlite:///{tmp_path / 'garbage.sqlite3'}", pki)
    result = _status(folder.cfg)
    assert result.returncode == EXIT_UNAVAILABLE
    assert "not a database" in _one_line_error(result)


def test_an_unsupported_ledger_url_is_a_configuration_error(tmp_path, pki):
    folder = _folder_with_ledger(tmp_path, "mysql://user@127.0.0.1/ledger", pki)
    result = _status(folder.cfg)
    assert result.returncode == EXIT_CONFIG
    assert "ledger.url" in _one_line_error(result)


def test_a_store_url_without_its_driver_is_one_clear_line(tmp_path, pki):
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    folder.configure(h.PLACEHOLDER_URL, store={"url": "mysql://user@127.0.0.1/store"})
    result = h.run_cli(folder.cfg, "run", "--dry-run")
    assert result.returncode == EXIT_CONFIG
    assert "store.url" in _one_line_error(result)


def test_a_state_dir_that_cannot_be_created_is_one_clear_line(tmp_path, pki):
    """A read-only state dir cannot be made by chmod when the tests run as root: a file where the ledger's
    folder should be fails the same way (mkdir refused)."""
    (tmp_path / "not-a-dir").write_text("x")
    folder = _folder_with_ledger(tmp_path, f"sqlite:///{tmp_path / 'not-a-dir' / 'ledger.sqlite3'}", pki)
    result = _status(folder.cfg)
    assert result.returncode == EXIT_UNAVAILABLE
    assert "not-a-dir" in _one_line_error(result)


def test_a_locked_ledger_is_one_clear_line(tmp_path, monkeypatch, pki):
    """Another process holds the ledger's write lock past the busy timeout (shortened here) while this one
    must migrate it."""
    from click.testing import CliRunner

    from connector.cli import main
    from connector.ledger import repo

    url = f"sqlite:///{tmp_path / 'locked.sqlite3'}"
    folder = _folder_with_ledger(tmp_path, url, pki)
    holder = sa.create_engine(url)
    with holder.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.connection.dbapi_connection.isolation_level = None
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        monkeypatch.setattr(repo, "BUSY_TIMEOUT_MS", 200)
        result = CliRunner().invoke(main, ["status", "--config", str(folder.cfg)])
        conn.exec_driver_sql("ROLLBACK")
    holder.dispose()
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "locked" in result.output and "Traceback" not in result.output


def test_a_full_disk_during_a_run_is_one_clear_line(tmp_path, pki):
    """The run cannot grow its ledger (RLIMIT_FSIZE: the write fails with EFBIG, as on a full disk; Python
    ignores SIGXFSZ): one line and exit 4, not a traceback; with room again, the next run feeds everything."""
    import resource

    eligible = set(h.synthetic_store(tmp_path / "store", 30, seed=5))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        assert h.run_cli(folder.cfg, "db", "upgrade").returncode == 0
        ledger_file = tmp_path / "state" / "ledger.sqlite3"
        limit = ledger_file.stat().st_size + 4096

        def small_files():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        full = subprocess.run(h.connector("run", "--config", str(folder.cfg)), env=h.connector_env(),
                              capture_output=True, text=True, timeout=180, preexec_fn=small_files)
        assert full.returncode == EXIT_UNAVAILABLE, (full.returncode, full.stderr[-3000:])
        assert "disk" in _one_line_error(full) or "full" in _one_line_error(full)
        h.run_until_done(folder.cfg)
    h.assert_exactly_once(folder, eligible)
