"""Opening what an action needs from the settings: the store and the ledger, with errors an operator can act on."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from connector.config import ConfigError, Settings
from connector.ledger.repo import Ledger, open_ledger
from connector.store import Store

log = logging.getLogger("connector")


def open_store(settings: Settings) -> Store:
    try:
        store = Store(settings.store.url, settings.store.content_root, settings.store.write_back)
    except (ImportError, sa.exc.ArgumentError) as exc:  # no such SQLAlchemy dialect, or its driver is not installed
        raise ConfigError(f"store.url: {settings.store.url.split('://', 1)[0]}:// cannot be used: {exc}") from None
    store.check_schema()
    return store


def open_settings_ledger(settings: Settings, *, create: bool = False) -> Ledger:
    """The configured ledger. Only what feeds (`run`, `daemon`) creates it: any other command finding none says
    where it looked (a root shell without the service's configuration must not read a new empty ledger)."""
    ledger = open_ledger(settings.ledger.url, create=create, migrate_apart=create)
    log.debug("ledger %s (instance %s)", describe_url(ledger.engine), settings.ledger.instance)
    return ledger


def describe_url(engine) -> str:
    """A database as an operator recognises it (its URL, never its password)."""
    return engine.url.render_as_string(hide_password=True)
