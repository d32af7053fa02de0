"""Opening what an action needs from the settings: the store and the ledger, with errors an operator can act on."""

from __future__ import annotations

import sqlalchemy as sa

from connector.config import ConfigError, Settings
from connector.ledger.repo import Ledger, open_ledger
from connector.store import Store


def open_store(settings: Settings) -> Store:
    try:
        store = Store(settings.store.url, settings.store.content_root, settings.store.write_back)
    except (ImportError, sa.exc.ArgumentError) as exc:  # no such SQLAlchemy dialect, or its driver is not installed
        raise ConfigError(f"store.url: {settings.store.url.split('://', 1)[0]}:// cannot be used: {exc}") from None
    store.check_schema()
    return store


def open_settings_ledger(settings: Settings) -> Ledger:
    return open_ledger(settings.ledger.url)
