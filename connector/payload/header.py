"""What a document's CDA header and its XDS DocumentEntry both say, decided in one place.

The DMP shows the XDS metadata; a reader opens the CDA. Each value both carry (title, language, legal
authenticator, author specialty) is chosen here from the store row, so the two builders cannot drift
apart; `tests/test_metadata_agreement.py` reads both back and compares them field by field.
"""

from __future__ import annotations

from connector.payload import codes
from connector.store import Document

LANGUAGE = "fr-FR"


def title(document: Document, fallback: str) -> str:
    """The store title, or `fallback` (the type code's display) when it is blank: CDA ST must not be blank."""
    return (document.title or "").strip() or fallback


def legal_authenticator_rpps(document: Document) -> str | None:
    """The responsible professional's RPPS: the store's, else the author (store contract)."""
    return document.legal_authenticator_rpps or document.author_rpps


def legal_authenticator_is_author(document: Document) -> bool:
    """Whether the legal authenticator is the author, whose name the store gives (the other's it does not)."""
    return legal_authenticator_rpps(document) == document.author_rpps


def author_specialty(document: Document) -> codes.Code | None:
    """The author's specialty in JDV_J01, or None when the store gives none or one outside J01 (then
    neither the CDA nor the metadata carries it: the CDA schematron would refuse the code)."""
    return codes.author_specialty(document.author_specialty_code)
