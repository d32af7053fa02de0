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
