"""A store user without the right to write dmp_feed_status (PostgreSQL, a real role): `check` says so; a run
feeds, logs the write-back failure without any SQL or parameter, exits 1 and `status --check` warns; once the
right is granted the next run writes the missed rows; `write-back --all` resynchronises the table."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from click.testing import CliRunner

import delivery_harness as h
from conftest import PG_URL
from connector.cli import main
from connector.store import dmp_document, dmp_feed_status, dmp_patient


def _invoke(cfg, *args):
    return CliRunner().invoke(main, [*args, "--config", str(cfg)])


def _feed_status(url) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {(r.document_id, r.version): r.status for r in conn.execute(sa.select(dmp_feed_status))}
    finally:
        engine.dispose()


def test_write_back_without_rights_is_visible_retried_and_resynchronised(tmp_path, pg_url):
    keys = h.synthetic_store(tmp_path / "store", 3, seed=9, per_patient=(1, 1))
    folder = h.make_folder(tmp_path)
    schema = pg_url.rsplit("%3D", 1)[1]
    role = "ro_" + uuid.uuid4().hex[:10]
    owner, sqlite = sa.create_engine(pg_url), sa.create_engine(f"sqlite:///{folder.store_db}")
    with sqlite.connect() as src, owner.begin() as dst:  # the store in PostgreSQL, dmp_feed_status made by the DPI
        for table in (dmp_patient, dmp_document, dmp_feed_status):
            table.create(dst)
        for table in (dmp_patient, dmp_document):
            dst.execute(sa.insert(table), [dict(r._mapping) for r in src.execute(sa.select(table))])
        dst.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        dst.execute(sa.text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
        dst.execute(sa.text(f"GRANT SELECT ON dmp_patient, dmp_document, dmp_feed_status TO {role}"))
    store_url = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        with h.sandbox(folder) as sb:
            cfg = folder.configure(sb.url)
            cfg.write_text(cfg.read_text().replace('url = "sqlite:///store/store.sqlite3"', f'url = "{store_url}"'))

            check = _invoke(cfg, "check")
            assert check.exit_code == 1
            assert "[FAIL] store     cannot write dmp_feed_status (InsufficientPrivilege: permission denied for " \
                   "table dmp_feed_status)" in check.output

            run = _invoke(cfg, "run")
            assert run.exit_code == 1, run.output
            assert "dmp_feed_status not written (InsufficientPrivilege: permission denied for table dmp_feed_status)" \
                   "; retried by the next run, or now with `dmp-connector write-back`" in run.output
            assert "[SQL" not in run.output and "parameters" not in run.output and "INSERT" not in run.output
            assert "needs a human: 3 dmp_feed_status row(s) not written" in run.output
            assert _feed_status(pg_url) == {}
            monitor = _invoke(cfg, "status", "--check")
            assert monitor.exit_code == 1 and "3 dmp_feed_status row(s) not written since" in monitor.stdout

            with owner.begin() as conn:
                conn.execute(sa.text(f"GRANT INSERT, UPDATE ON dmp_feed_status TO {role}"))
            again = _invoke(cfg, "run")
            assert again.exit_code == 0, again.output
            assert "dmp_feed_status: 3 row(s) written from the ledger" in again.output
            assert _feed_status(pg_url) == {k: "FED" for k in keys}
            assert _invoke(cfg, "status", "--check").exit_code == 0

            with owner.begin() as conn:  # the DPI emptied the table: resynchronised from the ledger
                conn.execute(sa.delete(dmp_feed_status))
            resync = _invoke(cfg, "write-back", "--all")
            assert resync.exit_code == 0 and "dmp_feed_status: 3 row(s) written" in resync.output
            assert _feed_status(pg_url) == {k: "FED" for k in keys}
    finally:
        owner.dispose()
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()
