"""`export`: write what a run would send, without sending or recording anything, for integrators and auditors.

Per submission set, a folder named after its uniqueId holding each CDA, the submission-set signature, the
signed VIHF, and the complete ITI-41 HTTP request (headers and SOAP 1.2 + MTOM body) exactly as POSTed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from connector import prepare, private, rules
from connector.actions import corrections
from connector.actions.context import open_store
from connector.config import ConfigError, Settings
from connector.dmp.client import iti41_message
from connector.ledger.repo import utcnow
from connector.ledger.schema import ITI57
from connector.payload import ids
from connector.scan import scan
from connector.trust.certs import load_credential


@dataclass(frozen=True)
class Exported:
    folder: Path
    documents: list[tuple[str, int]]


def export(settings: Settings, out: Path, *, document_id: str | None = None, version: int | None = None) -> tuple[list[Exported], list[str]]:
    """Export every document the rules accept, fed already or not (or the one asked for).
    Returns (exported sets, problems)."""
    if settings.certificates is None:
        raise ConfigError("certificates.sign: missing (export signs what it writes)")
    sign = load_credential(settings.certificates.sign)
    store = open_store(settings)
    exported, problems = [], []
    for group in scan(store, None, settings):
        wanted = [d for d in group if document_id is None
                  or (d.document_id == document_id and (version is None or d.version == version))]
        if not wanted:
            continue
        for d in wanted:
            if not d.eligible and document_id is not None:
                problems.append(f"{d.document_id} v{d.version}: not eligible ({d.reason}: {d.detail})")
        failures, batches = prepare.plan_patient(settings, [d for d in wanted if d.eligible])
        problems += [f"{d.document_id} v{d.version}: {exc}" for d, exc in failures]
        for batch in batches:
            exported.append(_write(settings, sign, out, batch))
    return exported, problems


AS_SENT_NOTE = """This folder is submission set {uid} as the ledger journaled it and sent it to the DMP: the same
submission-set and document uniqueIds and entryUUIDs, the same submissionTime ({time} UTC), the same documents
grouped the same way, rebuilt from the store as a resend would be. Made anew, and so different from what was sent:
the VIHF token (its issue time and validity), the XAdES signature (its signing time and value) and the MTOM
MessageID and boundary. A document changed in the store since it was sent, without a new version, would differ too.
Ledger state of the submission set: {state} ({attempts} attempt(s)).
"""


def export_as_sent(settings: Settings, out: Path, *, document_id: str,
                   version: int | None = None) -> tuple[list[Exported], list[str]]:
    """Export the submission set(s) the ledger journaled for a document: what was sent (or will be resent),
    with its recorded ids, time and grouping. Returns (exported sets, problems)."""
    import sqlalchemy as sa

    from connector.actions.context import open_settings_ledger
    from connector.ledger.schema import submission_documents as sd
    from connector.store import Candidate

    if settings.certificates is None:
        raise ConfigError("certificates.sign: missing (export signs what it writes)")
    ledger = open_settings_ledger(settings)
    query = sa.select(sd.c.submission_id, sd.c.version).where(sd.c.document_id == document_id)
    if version is not None:
        query = query.where(sd.c.version == version)
    with ledger.engine.connect() as conn:
        found = conn.execute(query.order_by(sd.c.submission_id)).all()
    if not found:
        return [], [f"{document_id}{'' if version is None else f' v{version}'}: never journaled for sending "
                    "(the ledger has no submission set holding it)"]
    sign = load_credential(settings.certificates.sign)
    store = open_store(settings)
    exported, problems = [], []
    for sub_id in dict.fromkeys(r.submission_id for r in found):
        record = ledger.submission(sub_id)
        site = settings.structure.site(record.finess_geo)
        batch, patient, problem, revisions = [], None, None, {}
        for doc in record.documents:
            item = store.get(doc.document_id, doc.version)
            if not isinstance(item, Candidate) or item.patient is None or site is None:
                problem = f"{doc.document_id} v{doc.version}: no longer in the store (or its site not configured)"
                break
            document = item.document if doc.masking is None else rules.with_masking(item.document, doc.masking)
            patient = item.patient
            if record.kind == ITI57:  # a withdrawal: no document, the entry it withdrew
                break
            revision = corrections.revision_of(doc)  # a replacement: as journaled (the entry replaced, its version)
            uid, xml = prepare.document_cda(settings, document, item.patient, site, store.content(document),
                                            revision=revision)
            batch.append((document, uid, xml))
            if revision is not None:
                revisions[document.key] = revision
        if problem:
            problems.append(f"submission set {record.submission_set_uid}: {problem}")
            continue
        if record.kind == ITI57:
            folder = _write_withdrawal(settings, sign, out, record, site, document, patient)
        else:
            keys = [(d.document_id, d.version) for d in record.documents]
            folder = _write(settings, sign, out, prepare.Batch(site, patient, batch, revisions), keys=keys,
                            uid=record.submission_set_uid, entry_uuid=record.entry_uuid, time=record.submission_time)
        private.write_file(folder.folder / "AS-SENT.txt", AS_SENT_NOTE.format(
            uid=record.submission_set_uid, time=record.submission_time, state=record.state,
            attempts=record.attempts).encode())
        exported.append(folder)
    return exported, problems


def _write(settings: Settings, sign, out: Path, batch: prepare.Batch, *, keys=None, uid=None, entry_uuid=None,
           time=None) -> Exported:
    oid_root = settings.structure.oid_root
    keys = keys or batch.keys
    uid = uid or ids.submission_set_unique_id(oid_root, keys)
    documents = [(prepare.dmp_document(d, batch.revisions.get(d.key)), doc_uid, xml)
                 for d, doc_uid, xml in batch.documents]
    prepared = prepare.submission(settings, sign, site=batch.site, patient=batch.patient, documents=documents,
                                  replaces={doc_uid: batch.revisions[d.key].replaces for d, doc_uid, _ in batch.documents
                                            if d.key in batch.revisions},
                                  submission_set_uid=uid,
                                  submission_set_entry_uuid=entry_uuid or ids.submission_set_entry_uuid(oid_root, keys),
                                  submission_time=time or utcnow())
    folder = out / uid
    private.make_dirs(folder)  # full CDAs and the VIHF: owner only, whatever the umask
    for document, doc_uid, xml in batch.documents:
        private.write_file(folder / f"cda-{_safe(document.document_id)}-v{document.version}.xml", xml)
    private.write_file(folder / "signature.xml", prepared.signature_xml)
    private.write_file(folder / "vihf.xml", etree.tostring(prepared.vihf, xml_declaration=True, encoding="UTF-8"))
    url = settings.dmp.repository_url
    _, headers, body = iti41_message(url, prepared.request, prepared.attachments, prepared.vihf)
    head = f"POST {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    private.write_file(folder / "iti41-request.http", head.encode("ascii") + bytes(body))
    return Exported(folder, keys)


def _write_withdrawal(settings: Settings, sign, out: Path, record, site, document, patient) -> Exported:
    """A journaled withdrawal as sent: its ITI-57 request (to the entry journaled; a send targets the Approved
    entry the registry gives at that moment) and its VIHF."""
    from connector.dmp.client import iti57_message

    doc = record.documents[0]
    prepared = corrections.withdrawal_builder(settings, sign, record, document, patient)(doc.entry_uuid)
    folder = out / record.submission_set_uid
    private.make_dirs(folder)
    private.write_file(folder / "vihf.xml", etree.tostring(prepared.vihf, xml_declaration=True, encoding="UTF-8"))
    url = settings.dmp.registry_url
    _, headers, body = iti57_message(url, prepared.request, prepared.vihf)
    head = f"POST {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    private.write_file(folder / "iti57-request.http", head.encode("ascii") + body)
    if record.note:
        private.write_file(folder / "REASON.txt", (record.note + "\n").encode())
    return Exported(folder, [(doc.document_id, doc.version)])


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
