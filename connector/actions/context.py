"""Opening what an action needs from the settings: the store and the ledger, with errors an operator can act on."""

from __future__ import annotations

from connector.config import Settings
from connector.ledger.repo import Ledger, open_ledger
from connector.store import Store


def open_store(settings: Settings) -> Store:
    store = Store(settings.store.url, settings.store.content_root, settings.store.write_back)
    store.check_schema()
    return store


def open_settings_ledger(settings: Settings) -> Ledger:
    return open_ledger(settings.ledger.url)
