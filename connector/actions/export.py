"""`export`: write what a run would send, without sending or recording anything, for integrators and auditors.

Per submission set, a folder named after its uniqueId holding each CDA, the submission-set signature, the
signed VIHF, and the complete ITI-41 HTTP request (headers and SOAP 1.2 + MTOM body) exactly as POSTed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from connector import prepare, private
from connector.actions.context import open_store
from connector.config import ConfigError, Settings
from connector.dmp.client import iti41_message
from connector.ledger.repo import utcnow
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


def _write(settings: Settings, sign, out: Path, batch: prepare.Batch) -> Exported:
    oid_root = settings.structure.oid_root
    uid = ids.submission_set_unique_id(oid_root, batch.keys)
    prepared = prepare.submission(settings, sign, site=batch.site, patient=batch.patient, documents=batch.documents,
                                  submission_set_uid=uid,
                                  submission_set_entry_uuid=ids.submission_set_entry_uuid(oid_root, batch.keys),
                                  submission_time=utcnow())
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
    private.write_file(folder / "iti41-request.http", head.encode("ascii") + body)
    return Exported(folder, batch.keys)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
