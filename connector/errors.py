"""The errors a command ends with, each mapped to its exit code by the CLI. Kept apart from the modules
that raise them (store, ledger, certificates) so that the CLI can catch them without importing SQLAlchemy
or cryptography at start-up."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot be used at all (unreachable, a table or column missing)."""


class LedgerError(RuntimeError):
    """The ledger cannot be used (unreachable, not migrated)."""


class CertificateError(Exception):
    """A certificate or key file that cannot be used; the message names the file, never the password."""
