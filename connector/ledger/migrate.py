"""Schema migrations of the ledger (Alembic), run by `dmp-connector db upgrade` and automatically for SQLite.

Revisions are named `NNNN_<what>.py` with revision id `NNNN`, so the head and the current revision are known
without importing Alembic (which costs half a second at every start of a short command like `status`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def current(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """The whole upgrade in one transaction: a failure or a kill -9 at any point leaves the ledger as it was
    (both SQLite and PostgreSQL have transactional DDL). pysqlite would commit each CREATE/DROP on its own (it
    only opens transactions before INSERT/UPDATE/DELETE), so on SQLite the transaction is opened explicitly."""
    from alembic import command

    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        dbapi_conn = conn.connection.dbapi_connection
        if sqlite:
            dbapi_conn.isolation_level = None  # pysqlite: no implicit BEGIN/COMMIT of its own
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _clear_unversioned(conn)
            command.upgrade(_config(conn), revision)
            conn.commit()
        finally:
            if sqlite:
                conn.rollback()  # a no-op after the commit
                dbapi_conn.isolation_level = ""


def upgrade_apart(url: str) -> None:
    """`upgrade` of a SQLite ledger file by a child process. Alembic (and Mako, Pygments) cost a process that
    imports them 12 MB resident for good: a feeding run that creates or upgrades its ledger (the first run, a
    daemon after an update) stays without them (bench/feed.py, 4,000 documents: RSS 150-162 -> 141-150 MB)."""
    from connector.ledger.repo import LedgerError  # repo imports this module

    child = subprocess.run([sys.executable, "-c", _CHILD, url], capture_output=True, text=True)
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [f"exit code {child.returncode}"]
        raise LedgerError(f"ledger migration failed: {lines[-1][:300]}")


_CHILD = "import sys; from connector.ledger import repo; repo.open_ledger(sys.argv[1], auto_migrate=True)"


def _clear_unversioned(conn) -> None:
    """Repair what an earlier version's interrupted first migration left (tables, no alembic_version): if
    those tables hold nothing, they are dropped (this transaction recreates them); if they hold rows, the
    ledger is refused: migrating over it could lose what it knows."""
    from connector.ledger.schema import metadata

    inspector = sa.inspect(conn)
    if inspector.has_table("alembic_version"):
        if conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar():
            return
    left = [t.name for t in reversed(metadata.sorted_tables) if inspector.has_table(t.name)]  # children first
    if not left:
        return
    if any(conn.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in left):
        from connector.errors import LedgerError

        raise LedgerError(f"the ledger has tables ({', '.join(left)}) holding rows but no schema version: it was "
                          "not made by dmp-connector, or a migration was interrupted; restore it from a backup")
    for t in left:
        conn.execute(sa.text(f"DROP TABLE {t}"))


def revision(engine: sa.Engine, message: str, rev_id: str) -> None:
    """Developer helper: autogenerate migration `rev_id` (next NNNN) from connector/ledger/schema.py."""
    from alembic import command

    with engine.begin() as conn:
        command.revision(_config(conn), message=message, autogenerate=True, rev_id=rev_id)
