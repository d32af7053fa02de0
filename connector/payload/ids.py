"""Deterministic identifiers of what we send to the DMP.

Every id is a pure function of the structure's OID root and of the store's document keys, so a
resend after a crash or an unknown outcome rebuilds exactly the same ids (the DMP then recognises
the submission instead of creating a second entry). The caller still stores them before the first
send; these functions only make the choice reproducible.

Arcs allocated under `structure.oid_root` (at most 30 characters, checked by the configuration):

    <root>.1.<H(document_id)>            document set (CDA setId): all versions of one document
    <root>.1.<H(document_id)>.<version>  document uniqueId (CDA id@root)
    <root>.2.<H(sorted document keys)>   submission set uniqueId
    <root>.3                             assigning authority of the IPP (sourcePatientId)
    <root>.4.<H(submission set uniqueId)> submission-set signature uniqueId
    <root>.5.<H(document_id, version, new status)> submission set uniqueId of an ITI-57 availability update

H is the first 64 bits of SHA-256 as a decimal integer (at most 20 digits, no leading zero), so a
document uniqueId is at most 30 + 3 + 20 + 1 + 10 = 64 characters for a version below 10**10,
the XDS limit. Entry UUIDs are UUIDv5 in a namespace derived from the OID root.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Iterable

MAX_OID_LENGTH = 64  # XDS uniqueId / CDA II root limit


def _arc(*parts: object) -> str:
    """A decimal OID arc from 64 bits of SHA-256 of an unambiguous encoding of `parts`."""
    digest = hashlib.sha256(json.dumps(parts).encode("ascii")).digest()
    return str(int.from_bytes(digest[:8], "big"))


def _oid(*arcs: str) -> str:
    value = ".".join(arcs)
    if len(value) > MAX_OID_LENGTH:
        raise ValueError(f"identifier {value} is longer than {MAX_OID_LENGTH} characters")
    return value


def _namespace(oid_root: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_OID, oid_root)


def _urn(value: uuid.UUID) -> str:
    return f"urn:uuid:{value}"


def _version(version: int) -> str:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"document version must be a non-negative integer, got {version!r}")
    return str(version)


def _canonical_keys(keys: Iterable[tuple[str, int]]) -> list[list]:
    unique = sorted({(str(doc_id), int(_version(version))) for doc_id, version in keys})
    if not unique:
        raise ValueError("a submission set needs at least one document")
    return [list(k) for k in unique]


def document_set_id(oid_root: str, document_id: str) -> str:
    """OID shared by all versions of a store document (CDA setId)."""
    return _oid(oid_root, "1", _arc("document", document_id))


def document_unique_id(oid_root: str, document_id: str, version: int) -> str:
    """OID of one version of a store document: XDS DocumentEntry.uniqueId and CDA id@root."""
    return _oid(document_set_id(oid_root, document_id), _version(version))


def entry_uuid(oid_root: str, document_id: str, version: int) -> str:
    """`urn:uuid:` entryUUID of the DocumentEntry of one document version."""
    return _urn(uuid.uuid5(_namespace(oid_root), json.dumps(["document", document_id, int(_version(version))])))


def submission_set_unique_id(oid_root: str, keys: Iterable[tuple[str, int]]) -> str:
    """OID of the submission set of these (document_id, version) keys, in any order."""
    return _oid(oid_root, "2", _arc("submission-set", _canonical_keys(keys)))


def submission_set_entry_uuid(oid_root: str, keys: Iterable[tuple[str, int]]) -> str:
    """`urn:uuid:` entryUUID of the submission set (RegistryPackage) of these keys."""
    return _urn(uuid.uuid5(_namespace(oid_root), json.dumps(["submission-set", _canonical_keys(keys)])))


def signature_unique_id(oid_root: str, submission_set_uid: str) -> str:
    """OID of the signature document of a submission set."""
    return _oid(oid_root, "4", _arc("signature", submission_set_uid))


def signature_entry_uuid(oid_root: str, submission_set_uid: str) -> str:
    """`urn:uuid:` entryUUID of the signature document of a submission set."""
    return _urn(uuid.uuid5(_namespace(oid_root), json.dumps(["signature", submission_set_uid])))


def update_submission_set_unique_id(oid_root: str, document_id: str, version: int, new_status: str) -> str:
    """OID of the ITI-57 submission set that moves one document version to `new_status` (Deleted, Archived):
    a resend after an unknown outcome carries the same id, so the registry can tell it already has it."""
    return _oid(oid_root, "5", _arc("update", document_id, int(_version(version)), new_status))


def update_submission_set_entry_uuid(oid_root: str, document_id: str, version: int, new_status: str) -> str:
    """`urn:uuid:` entryUUID of that ITI-57 submission set (RegistryPackage)."""
    return _urn(uuid.uuid5(_namespace(oid_root), json.dumps(["update", document_id, int(_version(version)), new_status])))


def ipp_authority(oid_root: str) -> str:
    """Assigning authority OID of the structure's IPP (sourcePatientId, CDA patientRole/id)."""
    return _oid(oid_root, "3")


def child_uuid(parent: str, role: str) -> str:
    """`urn:uuid:` id of a metadata object (Classification, ExternalIdentifier, Association)
    owned by `parent` (an entry UUID) in the given `role`: stable across rebuilds. It is
    `uuid.uuid5(UUID(parent), role)`, computed without building two UUID objects (~20 per document)."""
    digest = bytearray(hashlib.sha1(_uuid_bytes(parent) + role.encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=256)  # a submission's few owners, each asked for ~20 children
def _uuid_bytes(urn: str) -> bytes:
    return uuid.UUID(urn.removeprefix("urn:uuid:")).bytes
