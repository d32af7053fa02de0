"""The sandbox DMP: an HTTPS server (mutual TLS with the test CA) answering ITI-41 and ITI-18 the way the
DMP does, strictly, with a persistent state and optional fault injection.

Routes (under /si-dmp-server/v2/services, as the real DMP):
- POST …/repository: ITI-41 Provide and Register Document Set-b, MTOM only; answered in MTOM with a
  RegistryResponse (Success, or Failure with the RegistryErrors of `checks` and `state`).
- POST …/registry: ITI-18 Registry Stored Query: GetSubmissionSetAndContents (by
  $XDSSubmissionSetUniqueId or $XDSSubmissionSetEntryUUID), FindDocuments (by patient, optionally
  $XDSDocumentEntryStatus) and GetDocuments (by $XDSDocumentEntryUniqueId or $XDSDocumentEntryEntryUUID);
  answered only for the patient named by the VIHF, as the DMP would; each entry with its availability
  status. And ITI-57 Update Document Set (an lcm:SubmitObjectsRequest: UpdateAvailabilityStatus to Deleted or
  Archived, see `checks.check_update` and `state`), answered with a RegistryResponse.
A message that is not MTOM (ITI-41), not SOAP 1.2 or not XML gets a SOAP 1.2 fault (HTTP 400/500).
"""

from __future__ import annotations

import logging
import re
import signal
import ssl
import threading
import uuid
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lxml import etree

from connector import malloc
from connector.dmp import mtom, soap
from connector.sandbox import checks
from connector.sandbox.checks import CheckSettings, RegistryError, SoapFault
from connector.sandbox.faults import HTML_503, Fault, FaultInjector
from connector.sandbox.state import SandboxState

log = logging.getLogger(__name__)

BASE_PATH = "/si-dmp-server/v2/services"
REPOSITORY_PATH = BASE_PATH + "/repository"
REGISTRY_PATH = BASE_PATH + "/registry"
ITI41_RESPONSE_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
ITI18_RESPONSE_ACTION = "urn:ihe:iti:2007:RegistryStoredQueryResponse"
ITI57_RESPONSE_ACTION = "urn:ihe:iti:2010:UpdateDocumentSet-Response"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
DOCUMENT_ENTRY_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DMP_REPOSITORY_UID = "1.2.250.1.213.4.1.1.1.2"  # [I] notes §1
MAX_BODY = 256 * 1024 * 1024
SOAP_CONTENT_TYPE = 'application/soap+xml; charset=UTF-8; action="{}"'
# SOAP 1.2 HTTP binding: Sender faults are 400, the others 500.
FAULT_STATUS = {"Sender": 400}


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


DROP = None  # a handler result meaning: close the connection without answering


# --- the application: one request in, one Reply (or DROP) out -----------------------------------------


class SandboxDmp:
    def __init__(self, state: SandboxState, faults: FaultInjector, settings: CheckSettings):
        self.state, self.faults, self.settings = state, faults, settings

    def handle(self, path: str, content_type: str | None, body: bytes) -> Reply | None:
        self.faults.delay()
        if path not in (REPOSITORY_PATH, REGISTRY_PATH):
            return Reply(404, "text/plain; charset=UTF-8", b"not found\n")
        fault = self.faults.failure()  # decided before anything is read or stored
        if fault is not Fault.NONE:
            self.state.record_fault(fault.value, path.rsplit("/", 1)[-1])
        if fault is Fault.HTTP_503:
            return Reply(503, "text/html; charset=UTF-8", HTML_503)
        try:
            env, documents = self._decode(path, content_type, body)
            message_id = soap.header_value(env, "MessageID")
            if fault is Fault.BUSY:
                busy = RegistryError("XDSRegistryBusy", "registre occupé, réessayer plus tard", check="fault.busy")
                return self._failure(path, message_id, [busy])
            if path == REPOSITORY_PATH:
                return self._provide_and_register(env, documents, message_id)
            if checks.body_request(env).tag == f"{{{soap.LCM}}}SubmitObjectsRequest":
                return self._update_document_set(env, message_id)
            return self._stored_query(env, message_id)
        except SoapFault as exc:
            log.info("SOAP fault %s on %s: %s", exc.code, path.rsplit("/", 1)[-1], exc.reason)
            return Reply(
                FAULT_STATUS.get(exc.code, 500),
                SOAP_CONTENT_TYPE.format("http://www.w3.org/2005/08/addressing/soap/fault"),
                soap.fault(exc.code, exc.reason, exc.subcode),
            )

    @staticmethod
    def _decode(path: str, content_type: str | None, body: bytes) -> tuple[etree._Element, dict[str, bytes]]:
        if mtom.is_multipart(content_type):
            try:
                root, parts = mtom.decode(content_type, body)
                if _media_param(content_type, "type") != "application/xop+xml":
                    raise mtom.MtomError('multipart/related without type="application/xop+xml"')
                return root, mtom.resolve_documents(root, parts)
            except mtom.MtomError as exc:
                raise SoapFault("Sender", f"MTOM: {exc}") from None
        if path == REPOSITORY_PATH:
            raise SoapFault("Sender", "ITI-41 requires MTOM/XOP (multipart/related; type=application/xop+xml)")
        try:
            return soap.parse_xml(body), {}
        except soap.SoapError as exc:
            raise SoapFault("Sender", str(exc)) from None

    def _provide_and_register(self, env, documents, message_id) -> Reply | None:
        submission, errors = checks.check_provide_and_register(env, documents, self.settings)
        drop = False
        if not errors:
            drop = self.faults.drop_reply()
            errors = self.state.store(submission, reply_dropped=drop)
        if errors:
            self.state.reject(errors, request=message_id, submission_uid=submission.uid if submission else None)
            log.info("ITI-41 refused: %s", ", ".join(sorted({e.code for e in errors})))
            return self._failure(REPOSITORY_PATH, message_id, errors)
        # debug: one line per stored request costs CPU at benchmark rates; refusals stay at info
        log.debug("ITI-41 stored submission set %s (%d entries)", submission.uid, len(submission.entries))
        if drop:
            log.info("ITI-41 reply dropped after commit (fault injection): %s", submission.uid)
            return DROP
        return self._repository_reply(message_id, soap.registry_response("Success"))

    def _failure(self, path: str, message_id: str | None, errors: list[RegistryError]) -> Reply:
        triples = [(e.code, e.context, e.location or None, e.severity) for e in errors]
        if path == REPOSITORY_PATH:
            return self._repository_reply(message_id, soap.registry_response("Failure", triples))
        return self._registry_reply(message_id, _query_response("Failure", errors=triples))

    @staticmethod
    def _repository_reply(message_id: str | None, body: etree._Element) -> Reply:
        env = _response(body, ITI41_RESPONSE_ACTION, message_id)
        content_type, payload = mtom.encode(env, {}, action=ITI41_RESPONSE_ACTION)
        return Reply(200, content_type, payload)

    @staticmethod
    def _registry_reply(message_id: str | None, body: etree._Element) -> Reply:
        env = _response(body, ITI18_RESPONSE_ACTION, message_id)
        return Reply(200, SOAP_CONTENT_TYPE.format(ITI18_RESPONSE_ACTION), soap.to_bytes(env))

    # --- ITI-57 ------------------------------------------------------------------------------

    def _update_document_set(self, env: etree._Element, message_id: str | None) -> Reply:
        request, errors = checks.check_update(env, self.settings)
        if not errors:
            errors = self.state.update(request)
        if errors:
            self.state.reject(errors, request=message_id, submission_uid=request.uid if request else None)
            log.info("ITI-57 refused: %s", ", ".join(sorted({e.code for e in errors})))
            triples = [(e.code, e.context, e.location or None, e.severity) for e in errors]
            return self._update_reply(message_id, soap.registry_response("Failure", triples))
        log.info("ITI-57 applied: submission set %s (%d change(s))", request.uid, len(request.changes))
        return self._update_reply(message_id, soap.registry_response("Success"))

    @staticmethod
    def _update_reply(message_id: str | None, body: etree._Element) -> Reply:
        env = _response(body, ITI57_RESPONSE_ACTION, message_id)
        return Reply(200, SOAP_CONTENT_TYPE.format(ITI57_RESPONSE_ACTION), soap.to_bytes(env))

    # --- ITI-18 ------------------------------------------------------------------------------

    def _stored_query(self, env: etree._Element, message_id: str | None) -> Reply:
        request = checks.body_request(env)
        errors = checks.addressing_errors(env, soap.ITI18_ACTION)
        vihf, vihf_errors = checks.vihf_check(env, self.settings.ca_cert_pem)
        errors += vihf_errors
        query = request.find(f"{{{soap.RIM}}}AdhocQuery")
        if request.tag != f"{{{soap.QUERY}}}AdhocQueryRequest" or query is None:
            errors.append(_error("XDSRegistryError", "query:AdhocQueryRequest/rim:AdhocQuery attendu", "soap.body"))
        elif query.get("id") not in (GET_SUBMISSION_SET_AND_CONTENTS, FIND_DOCUMENTS, GET_DOCUMENTS):
            errors.append(_error("XDSUnknownStoredQuery", f"requête {query.get('id')} non prise en charge", "iti18.query"))
        if errors:
            self.state.reject(errors, request=message_id, submission_uid=None)
            return self._failure(REGISTRY_PATH, message_id, errors)
        option = request.find(f"{{{soap.QUERY}}}ResponseOption")
        leaf = option is None or option.get("returnType", "LeafClass") == "LeafClass"
        patient = vihf.get(checks.RESOURCE_ID)  # None only while the VIHF verifier is unavailable
        slots = _query_slots(query)
        if query.get("id") == FIND_DOCUMENTS:
            wanted = (slots.get("$XDSDocumentEntryPatientId") or [None])[0]
            if not wanted or (patient and wanted != patient):
                error = _error("XDSPatientIdDoesNotMatch", "patient différent du resource-id du VIHF", "iti18.patient")
                return self._failure(REGISTRY_PATH, message_id, [error])
            documents = self.state.documents_of(wanted)
            if statuses := slots.get("$XDSDocumentEntryStatus"):
                documents = [d for d in documents if d["status"] in statuses]
            return self._registry_reply(message_id, _query_response("Success", None, documents, leaf))
        if query.get("id") == GET_DOCUMENTS:
            unique_ids = slots.get("$XDSDocumentEntryUniqueId") or []
            entry_uuids = slots.get("$XDSDocumentEntryEntryUUID") or []
            if bool(unique_ids) == bool(entry_uuids):
                error = _error("XDSStoredQueryParamNumber",
                               "$XDSDocumentEntryUniqueId ou $XDSDocumentEntryEntryUUID requis (un seul)", "iti18.param")
                return self._failure(REGISTRY_PATH, message_id, [error])
            documents = self.state.entries(patient=patient, unique_ids=unique_ids, entry_uuids=entry_uuids)
            return self._registry_reply(message_id, _query_response("Success", None, documents, leaf))
        submission = None
        if uid := (slots.get("$XDSSubmissionSetUniqueId") or [None])[0]:
            submission = self.state.submission(uid)
        elif entry_uuid := (slots.get("$XDSSubmissionSetEntryUUID") or [None])[0]:
            rows = self.state.query("SELECT uid FROM submissions WHERE entry_uuid = ?", (entry_uuid,))
            submission = self.state.submission(rows[0]["uid"]) if rows else None
        else:
            error = _error("XDSStoredQueryParamNumber", "$XDSSubmissionSetUniqueId ou $…EntryUUID requis", "iti18.param")
            return self._failure(REGISTRY_PATH, message_id, [error])
        if submission and patient and submission["patient"] != patient:
            submission = None  # another patient's DMP: the DMP reveals nothing
        documents = submission["documents"] if submission else []
        return self._registry_reply(message_id, _query_response("Success", submission, documents, leaf))


def _error(code: str, context: str, check: str) -> RegistryError:
    return RegistryError(code, context, check=check)


def _response(body: etree._Element, action: str, relates_to: str | None) -> etree._Element:
    env = etree.Element(f"{{{soap.SOAP12}}}Envelope", nsmap={"soap": soap.SOAP12, "wsa": soap.WSA})
    header = etree.SubElement(env, f"{{{soap.SOAP12}}}Header")
    etree.SubElement(header, f"{{{soap.WSA}}}Action").text = action
    etree.SubElement(header, f"{{{soap.WSA}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    if relates_to:
        etree.SubElement(header, f"{{{soap.WSA}}}RelatesTo").text = relates_to
    etree.SubElement(env, f"{{{soap.SOAP12}}}Body").append(body)
    return env


def _query_slots(query: etree._Element) -> dict[str, list[str]]:
    """Stored-query parameters: `'value'` or `('a','b')` → ['a', 'b']."""
    slots = {}
    for slot in query.findall(f"{{{soap.RIM}}}Slot"):
        values = []
        for value in slot.iter(f"{{{soap.RIM}}}Value"):
            text = (value.text or "").strip()
            if text.startswith("(") and text.endswith(")"):
                text = text[1:-1]
            values += [v.strip().strip("'") for v in text.split(",") if v.strip()]
        slots[slot.get("name")] = values
    return slots


def _query_response(status, submission=None, documents=(), leaf=True, errors=()) -> etree._Element:
    """query:AdhocQueryResponse with the stored submission set, its documents and HasMember associations
    (LeafClass), or only their ids (ObjectRef)."""
    resp = etree.Element(f"{{{soap.QUERY}}}AdhocQueryResponse", nsmap={"query": soap.QUERY, "rim": soap.RIM, "rs": soap.RS})
    resp.set("status", soap.STATUS_PREFIX + status)
    if errors:  # rs:RegistryErrorList comes before rim:RegistryObjectList (query.xsd)
        resp.append(soap.registry_response(status, errors).find(f"{{{soap.RS}}}RegistryErrorList"))
    objects = etree.SubElement(resp, f"{{{soap.RIM}}}RegistryObjectList")
    members = [d for d in documents if d["entry_uuid"]]
    if not leaf:
        for ref in ([submission["entry_uuid"]] if submission else []) + [d["entry_uuid"] for d in members]:
            _rim(objects, "ObjectRef", id=ref)
        return resp
    for doc in members:
        eo = _rim(objects, "ExtrinsicObject", id=doc["entry_uuid"], mimeType="text/xml",
                  objectType=DOCUMENT_ENTRY_TYPE, status=doc.get("status") or APPROVED)
        _slot(eo, "hash", doc["hash"])
        _slot(eo, "size", str(doc["size"]))
        _slot(eo, "repositoryUniqueId", DMP_REPOSITORY_UID)
        if doc["type_code"]:
            _rim(eo, "Classification", id=_new_id(), classificationScheme=checks.DE_TYPE_CODE,
                 classifiedObject=doc["entry_uuid"], nodeRepresentation=doc["type_code"])
        _identifier(eo, checks.DE_PATIENT_ID, doc["patient"])
        _identifier(eo, checks.DE_UNIQUE_ID, doc["uid"])
    if submission:
        ss = submission["entry_uuid"]
        package = _rim(objects, "RegistryPackage", id=ss, status=APPROVED)
        _slot(package, "submissionTime", re.sub(r"[^0-9]", "", submission["received_at"][:19]))
        _identifier(package, checks.SS_PATIENT_ID, submission["patient"])
        _identifier(package, checks.SS_UNIQUE_ID, submission["uid"])
        if submission["source_id"]:
            _identifier(package, checks.SS_SOURCE_ID, submission["source_id"])
        _rim(objects, "Classification", id=_new_id(), classifiedObject=ss, classificationNode=checks.SS_NODE)
        for doc in members:
            association = _rim(objects, "Association", id=_new_id(), associationType=HAS_MEMBER,
                               sourceObject=ss, targetObject=doc["entry_uuid"], status=APPROVED)
            _slot(association, "SubmissionSetStatus", "Original")
    return resp


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _rim(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{soap.RIM}}}{tag}", **attrs)


def _slot(owner: etree._Element, name: str, value: str) -> None:
    _rim(_rim(_rim(owner, "Slot", name=name), "ValueList"), "Value").text = value


def _identifier(owner: etree._Element, scheme: str, value: str) -> None:
    ei = _rim(owner, "ExternalIdentifier", id=_new_id(), registryObject=owner.get("id"),
              identificationScheme=scheme, value=value)
    _rim(_rim(ei, "Name"), "LocalizedString", value=scheme)


# --- HTTPS server ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-dmp/1"
    server: _TlsServer
    # The headers and the body go out in two writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK (40 ms on Linux), on top of the injected latency.
    disable_nagle_algorithm = True

    def do_POST(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._send(Reply(411, "text/plain; charset=UTF-8", b"Content-Length required\n"))
        if int(length) > MAX_BODY:
            self.close_connection = True
            return self._send(Reply(413, "text/plain; charset=UTF-8", b"request too large\n"))
        body = self.rfile.read(int(length))
        try:
            reply = self.server.app.handle(self.path.split("?", 1)[0], self.headers.get("Content-Type"), body)
        except Exception:  # a bug of the sandbox: answer like a broken server, keep serving
            log.exception("sandbox DMP internal error")
            reply = Reply(500, "text/plain; charset=UTF-8", b"internal error\n")
        if reply is DROP:
            self.close_connection = True
            return
        self._send(reply)

    def do_GET(self):
        self._send(Reply(405, "text/plain; charset=UTF-8", b"POST only\n"))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format, *args):  # request lines carry no patient data; keep them at debug
        log.debug("%s " + format, self.address_string(), *args)


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, tls: ssl.SSLContext, app: SandboxDmp):
        self.tls, self.app = tls, app
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the request's thread, so a slow client never blocks accept().
        request.settimeout(60)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake refused from %s: %s", client_address[0], getattr(exc, "reason", None) or exc)
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()


def tls_context(ca_cert: Path, server_cert: Path, server_key: Path, server_password_file: Path) -> ssl.SSLContext:
    """TLS ≥ 1.2, server certificate from the test PKI, client certificate REQUIRED and issued by the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_cert))
    password = Path(server_password_file).read_bytes().rstrip(b"\r\n")
    ctx.load_cert_chain(str(server_cert), str(server_key), password=password)
    return ctx


class SandboxServer:
    """The sandbox DMP bound to its port; `start()` serves from a background thread."""

    def __init__(self, httpd: _TlsServer, state: SandboxState):
        self.httpd, self.state = httpd, state
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """The DMP base URL (`dmp.base_url` of the connector's configuration)."""
        host = self.httpd.server_address[0]
        return f"https://{host}:{self.port}{BASE_PATH}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sandbox-dmp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        self.state.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def pki_paths(pki_dir: Path) -> tuple[Path, Path, Path, Path]:
    """(ca_cert, server_cert, server_key, server_password_file) of a test PKI folder, created if empty."""
    pki_dir = Path(pki_dir)
    if not (pki_dir / "ca.pem").is_file():
        from connector.trust.pki import create_test_pki

        files = create_test_pki(pki_dir)
        return files.ca_cert, files.server_cert, files.server_key, files.server_password_file
    return pki_dir / "ca.pem", pki_dir / "server.pem", pki_dir / "server.key.pem", pki_dir / "server.password"


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    pki_dir: Path | None = None,
    ca_cert: Path | None = None,
    server_cert: Path | None = None,
    server_key: Path | None = None,
    server_password_file: Path | None = None,
    state_path: Path,
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    drop_after_commit_rate: float = 0.0,
    fast: bool = False,
    seed: int | None = None,
    auto_create_patients: bool = True,
    keep_content: bool = False,
) -> SandboxServer:
    """A sandbox DMP bound to host:port (0: any free port), not yet serving: call `.start()`."""
    if pki_dir is not None:
        ca_cert, server_cert, server_key, server_password_file = pki_paths(pki_dir)
    if not all((ca_cert, server_cert, server_key, server_password_file)):
        raise ValueError("give pki_dir, or ca_cert, server_cert, server_key and server_password_file")
    state = SandboxState(state_path, keep_content=keep_content, auto_create_patients=auto_create_patients)
    settings = CheckSettings(ca_cert_pem=Path(ca_cert).read_bytes(), fast=fast)
    checks.warm_up(settings)
    app = SandboxDmp(state, FaultInjector(latency_ms, fail_rate, drop_after_commit_rate, seed), settings)
    httpd = _TlsServer((host, port), tls_context(ca_cert, server_cert, server_key, server_password_file), app)
    return SandboxServer(httpd, state)


def main(**options) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (the CLI's `sandbox serve`)."""
    malloc.tune(_KEEP_FREED_MEMORY)
    server = serve(**options).start()
    print(f"sandbox DMP listening on {server.url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()


# Let glibc keep freed request buffers for the next request. By default it hands every freed multi-megabyte
# buffer (the body, its parts, the parsed CDAs) back to the kernel and page-faults it in again for the next
# request: ≈700 page faults per ITI-41, 10–15 % of the sandbox's CPU. Only for the sandbox's own process
# (`main`), not for a process that merely embeds it.
_KEEP_FREED_MEMORY = {
    malloc.M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # its maximum; bigger blocks are still mmap'ed
    malloc.M_TRIM_THRESHOLD: 128 * 1024 * 1024,  # return memory to the kernel past 128 MB free
}


def _media_param(content_type: str, name: str) -> str | None:
    msg = Message()
    msg["Content-Type"] = content_type
    value = msg.get_param(name)
    return value.lower() if isinstance(value, str) else None
