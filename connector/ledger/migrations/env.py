"""Alembic environment: the URL and connection come from connector.ledger.migrate, never from an ini file."""

from alembic import context

from connector import testhooks
from connector.ledger.schema import metadata

connection = context.config.attributes["connection"]
# The caller (connector.ledger.migrate.upgrade) holds one transaction around the whole upgrade.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, transactional_ddl=True,
                  on_version_apply=lambda **_: testhooks.point("migration_step"))
with context.begin_transaction():
    context.run_migrations()
