"""The one error the payload builders and validators raise.

`reason` is a stable code the ledger stores and the status report counts; the message names the
document (or submission set) id and what is wrong, never patient data (no INS, name or birth date).
"""

from __future__ import annotations

CDA_INVALID = "CDA_INVALID"
METADATA_INVALID = "METADATA_INVALID"


class PayloadError(ValueError):
    """A document cannot be turned into a valid DMP payload; `reason` says which stage refused it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
