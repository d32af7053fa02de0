"""The vocabulary of a document's life in the DMP after its first feeding: replacement and withdrawal.

- **Replace** (ITI-41, `xds.build_provide_and_register` with an `Entry.replaces`): a new DocumentEntry (new
  uniqueId, new entryUUID) with an Association RPLC to the entryUUID of the version it replaces, as the
  registry gave it (ITI-18 GetDocuments); its CDA keeps the setId, has a higher versionNumber and a
  `relatedDocument typeCode="RPLC"` naming the replaced CDA's id (`cda.build_cda(replaces=…)`). The registry
  then marks the replaced entry Deprecated.
- **Withdraw** (ITI-57 UpdateDocumentSet, `update.build_update_availability`): a SubmissionSet and an
  Association UpdateAvailabilityStatus to the entry, from `OriginalStatus` to `NewStatus` Deleted (or Archived),
  as the GIE's examples TD3.3c / TD3.3d.

Availability statuses: ebRS's Approved and Deprecated, the CI-SIS's Deleted and Archived (GIE examples).
"""

from __future__ import annotations

from dataclasses import dataclass

RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"
STATUSES = (APPROVED, DEPRECATED, DELETED, ARCHIVED)
# What a withdrawal may ask for (ITI-57 NewStatus, GIE TD3.3c: Deleted, TD3.3d: Archived).
WITHDRAWAL_STATUSES = (DELETED, ARCHIVED)


def short_status(status: str | None) -> str | None:
    """`Approved` / `Deprecated` / `Deleted` / `Archived` of a status URN (any other text: its last part)."""
    return status.rsplit(":", 1)[-1] if status else None


def status_urn(short: str) -> str:
    """The URN of `Approved` / `Deprecated` / `Deleted` / `Archived` (a URN is returned as is)."""
    for urn in STATUSES:
        if short in (urn, short_status(urn)):
            return urn
    raise ValueError(f"unknown availability status {short!r} (Approved, Deprecated, Deleted or Archived)")


@dataclass(frozen=True)
class Replaces:
    """The DMP entry a new version replaces.

    `entry_uuid`: its entryUUID as the registry gave it (ITI-18 GetDocuments by uniqueId: the Approved one),
    never one we computed; `unique_id`: its uniqueId, which is its CDA's id (the new CDA's
    relatedDocument/parentDocument/id); `version`: its CDA versionNumber when known (the new one must be higher)."""

    entry_uuid: str
    unique_id: str
    version: int | None = None
