"""The DMP client: ITI-41 (MTOM over mutual TLS), ITI-57 availability updates, ITI-18 queries (reconciliation,
entries and their status), each call ending in an Outcome (or None when a query got no answer).

Nothing here raises for a transport or DMP problem: every exchange is classified (outcome.py), and
whether the request had left when it failed decides between "transient, not sent" and "unknown".
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING

import requests
from lxml import etree

from connector.config import DmpSettings
from connector.dmp import mtom, outcome, soap, tls
from connector.trust.certs import Credential

if TYPE_CHECKING:
    from connector.dmp import iti18

log = logging.getLogger(__name__)

ACCEPT = "multipart/related, application/soap+xml"

class DmpClient:
    """ITI-41 and ITI-18 towards one DMP configuration, over one pooled mutual-TLS session."""

    def __init__(self, dmp_settings: DmpSettings, auth_cli: Credential, password: bytes | None = None):
        self.settings = dmp_settings
        self.session = tls.mtls_session(dmp_settings, auth_cli, password)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.settings.connect_timeout, self.settings.read_timeout)

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _post(self, url: str, headers: dict, body: bytes | mtom.Body) -> outcome.Outcome:
        """POST one SOAP message and classify the reply, or the failure (sent or not: see request_was_sent)."""
        try:
            reply = self.session.post(url, data=body, headers=headers, timeout=self.timeout)
            return outcome.classify_response(reply.status_code, reply.headers.get("Content-Type"), reply.content,
                                             sent=True)
        except requests.RequestException as exc:
            return outcome.classify_response(None, None, None, exc, sent=outcome.request_was_sent(exc))

    def provide_and_register(
        self, request: etree._Element, attachments: dict[str, bytes], vihf: etree._Element
    ) -> outcome.Outcome:
        """Send one ITI-41 ProvideAndRegisterDocumentSet-b; the xdsb:Document bytes travel as MTOM parts."""
        url = self.settings.repository_url
        message_id, headers, body = iti41_message(url, request, attachments, vihf)
        result = self._post(url, headers, body)
        # The submission's outcome is logged by deliver.py, with its cause, at the level it deserves.
        log.debug("ITI-41 %s: %s (%s): %s", message_id, result.kind, result.status, result.message)
        return dataclasses.replace(result, message_id=message_id)

    def update_document_set(self, request: etree._Element, vihf: etree._Element) -> outcome.Outcome:
        """Send one ITI-57 Update Document Set (`payload.update`: withdraw or archive an entry) to the registry,
        as a plain SOAP 1.2 message, and classify the reply like an ITI-41's (an unknown outcome is settled with
        `get_documents` before anything is resent)."""
        url = self.settings.registry_url
        message_id, headers, body = iti57_message(url, request, vihf)
        result = self._post(url, headers, body)
        log.info(
            "ITI-57 %s: %s (%s) %s", message_id, result.kind, result.status,
            ", ".join(e.code for e in result.errors) or "",
        )
        return dataclasses.replace(result, message_id=message_id)

    def get_documents(
        self, *, unique_ids=(), entry_uuids=(), patient_ins_cx: str, vihf: etree._Element
    ) -> list[iti18.RegistryEntry] | None:
        """ITI-18 GetDocuments by uniqueIds or by entryUUIDs (one of the two): the entries the DMP holds among
        them with their entryUUID, uniqueId and availability status ([] if none), or None if the query failed
        (no answer: never guess)."""
        from connector.dmp import iti18  # zeep: imported by the few runs that look something up (3 MB, 0.15 s)

        try:
            return iti18.get_documents(
                self.session, self.settings.registry_url, self.timeout, unique_ids=unique_ids,
                entry_uuids=entry_uuids, patient_ins_cx=patient_ins_cx, vihf=vihf,
            )
        except iti18.Iti18Error as exc:
            log.warning("ITI-18 GetDocuments failed: %s", exc)
            return None

    def find_submission_set(self, submission_set_uid: str, patient_ins_cx: str, vihf: etree._Element) -> bool | None:
        """ITI-18: True if the DMP holds the submission set, False if not, None if the query failed."""
        from connector.dmp import iti18

        try:
            return iti18.find_submission_set(
                self.session, self.settings.registry_url, self.timeout, submission_set_uid, patient_ins_cx, vihf
            )
        except iti18.Iti18Error as exc:
            log.warning("ITI-18 for submission set %s failed: %s", submission_set_uid, exc)
            return None


def iti57_message(url: str, request: etree._Element, vihf: etree._Element) -> tuple[str, dict[str, str], bytes]:
    """(MessageID, HTTP headers, body) of an ITI-57 request exactly as it is POSTed to `url`."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    env = soap.envelope(request, action=soap.ITI57_ACTION, to=url, security=[vihf], message_id=message_id)
    content_type = f'application/soap+xml; charset=UTF-8; action="{soap.ITI57_ACTION}"'
    return message_id, {"Content-Type": content_type, "Accept": ACCEPT}, soap.to_bytes(env)


def iti41_message(
    url: str, request: etree._Element, attachments: dict[str, bytes], vihf: etree._Element
) -> tuple[str, dict[str, str], mtom.Body]:
    """(MessageID, HTTP headers, body) of an ITI-41 request exactly as it is POSTed to `url` (`bytes(body)`)."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    env = soap.envelope(request, action=soap.ITI41_ACTION, to=url, security=[vihf], message_id=message_id)
    content_type, body = mtom.encode_body(env, attachments, action=soap.ITI41_ACTION)
    return message_id, {"Content-Type": content_type, "Accept": ACCEPT, "MIME-Version": "1.0"}, body
