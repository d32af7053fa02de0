"""ITI-18 Registry Stored Query: is a submission set (by uniqueId) already in the DMP? Which entries, in which
availability status, does the DMP hold for these document uniqueIds or entryUUIDs?

GetSubmissionSetAndContents reconciles an "unknown" or "duplicate" ITI-41 outcome. GetDocuments gives the
entryUUID the registry gave a document version (the target of a replacement's RPLC) and its availability
status (Approved, Deprecated, Deleted, Archived: settles an unknown replacement or withdrawal). zeep builds the AdhocQueryRequest from
the IHE WSDL (SOAP 1.2 binding) and posts it over the connector's mutual-TLS session; our own
WS-Addressing and wsse:Security (VIHF) headers are passed as raw elements (zeep's WSA plugin adds
no mustUnderstand nor ReplyTo, and uses the WSDL's placeholder address). The reply is read with lxml
and classified like any other DMP reply (raw_response: zeep never parses foreign XML for us).
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from dataclasses import dataclass

import requests
import zeep
import zeep.transports
from lxml import etree

from connector.dmp import mtom, outcome, soap
from connector.payload.lifecycle import short_status
from connector.resources import schemas_dir

log = logging.getLogger(__name__)

GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
DE_UNIQUE_ID_SCHEME = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
DE_PATIENT_ID_SCHEME = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
SUBMISSION_SET_CLASSIFICATION = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_UNIQUE_ID_SCHEME = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_PATIENT_ID_SCHEME = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
_BINDING = "{urn:ihe:iti:xds-b:2007}DocumentRegistry_Binding_Soap12"
_OPERATION = "DocumentRegistry_RegistryStoredQuery"

# The vendored WSDL also declares the HL7v3 (PIX feed) operations, whose schemas are not vendored, and
# the ebRS schemas import xml.xsd from www.w3.org: serve stubs rather than touch the network.
_STUBS = {
    "HL7V3": b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:hl7-org:v3"/>',
    "xml.xsd": b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    b'targetNamespace="http://www.w3.org/XML/1998/namespace"><xs:attribute name="lang" type="xs:language"/>'
    b"</xs:schema>",
}


class Iti18Error(Exception):
    """The stored query failed; `outcome` says how (transient, permanent, unknown)."""

    def __init__(self, result: outcome.Outcome):
        super().__init__(f"ITI-18 query failed ({result.kind}): {result.message}")
        self.outcome = result


class _Transport(zeep.transports.Transport):
    """Loads the WSDL from local files only, posts over the mTLS session without logging the message."""

    def __init__(self, session: requests.Session | None = None, timeout=None):
        super().__init__(session=requests.Session())  # WSDL loading only: file:// URLs
        self.mtls, self.post_timeout = session, timeout

    def load(self, url: str) -> bytes:
        for marker, stub in _STUBS.items():
            if marker in url:
                return stub
        if url.startswith(("http://", "https://")):
            raise ValueError(f"refusing to fetch {url} while loading the registry WSDL")
        return super().load(url)

    def post(self, address, message, headers):
        return self.mtls.post(address, data=message, headers=headers, timeout=self.post_timeout)


_wsdl = None
_wsdl_lock = threading.Lock()


def _registry_wsdl():
    """The registry WSDL, parsed once per process (zeep Document, shared by every client)."""
    global _wsdl
    with _wsdl_lock:
        if _wsdl is None:
            path = schemas_dir() / "IHE-IT-Infrastructure" / "wsdl" / "XDS.b_DocumentRegistry.wsdl"
            with warnings.catch_warnings():  # the stubbed HL7v3 operations are reported as invalid
                warnings.simplefilter("ignore", UserWarning)
                _wsdl = zeep.Client(str(path), transport=_Transport()).wsdl
        return _wsdl


def _headers(registry_url: str, vihf: etree._Element) -> list[etree._Element]:
    """WS-Addressing (Action mustUnderstand, MessageID, To, ReplyTo) and wsse:Security, as for ITI-41."""
    env = soap.envelope(etree.Element("unused"), action=soap.ITI18_ACTION, to=registry_url, security=[vihf])
    return list(env.find(f"{{{soap.SOAP12}}}Header"))


_QUERY_DEFAULTS = {"federated": "false", "maxResults": "-1", "startIndex": "0"}  # query.xsd


class _OurHeaders(zeep.Plugin):
    """zeep adds WS-Addressing headers of its own for an operation with a wsaw:Action (a second Action,
    MessageID and To: InvalidCardinality for a WS-Addressing endpoint) and prunes the namespace declarations
    of the whole header, the VIHF's xmlns:xs among them (its xsi:type="xs:string" values need it, as in the
    GIE's examples): the header goes out exactly as we built it."""

    def __init__(self, headers: list[etree._Element]):
        self.headers = headers

    def egress(self, envelope, http_headers, operation, binding_options):
        header = envelope.find(f"{{{soap.SOAP12}}}Header")
        for child in list(header):
            header.remove(child)
        header.extend(copy.deepcopy(h) for h in self.headers)
        # zeep also writes out the AdhocQueryRequest attributes whose values are the schema's defaults; the GIE's
        # stored query (TD3.1) leaves them off, and so do we.
        request = envelope.find(f"{{{soap.SOAP12}}}Body/{{{soap.QUERY}}}AdhocQueryRequest")
        for name, default in _QUERY_DEFAULTS.items():
            if request is not None and request.get(name) == default:
                del request.attrib[name]
        return envelope, http_headers


def post_stored_query(
    session: requests.Session, registry_url: str, timeout, submission_set_uid: str, vihf: etree._Element
) -> requests.Response:
    """POST GetSubmissionSetAndContents for one submission-set uniqueId; returns the raw HTTP response."""
    return post_query(session, registry_url, timeout, GET_SUBMISSION_SET_AND_CONTENTS,
                      {"$XDSSubmissionSetUniqueId": [submission_set_uid]}, vihf)


def post_query(
    session: requests.Session, registry_url: str, timeout, query_id: str, slots: dict[str, list[str]],
    vihf: etree._Element,
) -> requests.Response:
    """POST one stored query (LeafClass), each slot's values as the list `('a','b')`; the raw HTTP response."""
    headers = _headers(registry_url, vihf)
    client = zeep.Client(_registry_wsdl(), transport=_Transport(session, timeout),
                         settings=zeep.Settings(raw_response=True, strict=True), plugins=[_OurHeaders(headers)])
    service = client.create_service(_BINDING, registry_url)
    return getattr(service, _OPERATION)(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={
            "id": query_id,
            "Slot": [{"name": name, "ValueList": {"_value_1": [{"Value": _value_list(values)}]}}
                     for name, values in slots.items()],
        },
        _soapheaders=headers,
    )


def _value_list(values: list[str]) -> str:
    """A stored-query list parameter: `('a','b')` (IHE ITI TF-2a 3.18.4.1.2.3.5); a quote is doubled."""
    return "(" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def submission_set_found(response: etree._Element, submission_set_uid: str, patient_ins_cx: str | None) -> bool:
    """Whether a query:AdhocQueryResponse holds the RegistryPackage (submission set) with that uniqueId
    (and, when given, that patient id)."""
    for package in response.iterfind("rim:RegistryObjectList/rim:RegistryPackage", soap.NS):
        ids = {e.get("identificationScheme"): e.get("value")
               for e in package.iterfind("rim:ExternalIdentifier", soap.NS)}
        if ids.get(SS_UNIQUE_ID_SCHEME) != submission_set_uid:
            continue
        if patient_ins_cx and ids.get(SS_PATIENT_ID_SCHEME) not in (None, patient_ins_cx):
            raise Iti18Error(outcome.Outcome(outcome.PERMANENT, "Success", (),
                                             "the submission set uniqueId is registered for another patient"))
        return True
    return False


def find_submission_set(
    session: requests.Session, registry_url: str, timeout, submission_set_uid: str, patient_ins_cx: str | None,
    vihf: etree._Element,
) -> bool:
    """True if the registry holds the submission set, False if the query succeeded without it.
    Raises Iti18Error (with the classified outcome) when the query itself failed."""
    body = _answer(lambda: post_stored_query(session, registry_url, timeout, submission_set_uid, vihf))
    found = submission_set_found(body, submission_set_uid, patient_ins_cx)
    log.info("ITI-18: submission set %s %s", submission_set_uid, "found" if found else "not found")
    return found


@dataclass(frozen=True)
class RegistryEntry:
    """One DocumentEntry as the registry holds it."""

    entry_uuid: str  # the registry's id of the entry (targetObject of an RPLC or an ITI-57 update)
    unique_id: str | None  # XDSDocumentEntry.uniqueId (the CDA id)
    status: str | None  # availability status URN (lifecycle.APPROVED, DEPRECATED, DELETED, ARCHIVED)
    patient_id: str | None  # XDSDocumentEntry.patientId (CX)

    @property
    def availability(self) -> str | None:
        """`Approved`, `Deprecated`, `Deleted` or `Archived`."""
        return short_status(self.status)


def document_entries(response: etree._Element) -> list[RegistryEntry]:
    """The DocumentEntries (ExtrinsicObjects) of a query:AdhocQueryResponse, in its order."""
    entries = []
    for eo in response.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", soap.NS):
        ids = {e.get("identificationScheme"): e.get("value") for e in eo.iterfind("rim:ExternalIdentifier", soap.NS)}
        entries.append(RegistryEntry(eo.get("id"), ids.get(DE_UNIQUE_ID_SCHEME), eo.get("status") or None,
                                     ids.get(DE_PATIENT_ID_SCHEME)))
    return entries


def get_documents(
    session: requests.Session, registry_url: str, timeout, *, unique_ids=(), entry_uuids=(),
    patient_ins_cx: str | None, vihf: etree._Element,
) -> list[RegistryEntry]:
    """ITI-18 GetDocuments by uniqueId or by entryUUID (exactly one of the two lists): the entries the registry
    holds among them, with their status ([] when it holds none). An entry of another patient than
    `patient_ins_cx` is an error. Raises Iti18Error (with the classified outcome) when the query itself failed."""
    if bool(unique_ids) == bool(entry_uuids):
        raise ValueError("GetDocuments takes uniqueIds or entryUUIDs, not both nor none")
    slot, wanted = (("$XDSDocumentEntryUniqueId", list(unique_ids)) if unique_ids
                    else ("$XDSDocumentEntryEntryUUID", list(entry_uuids)))
    body = _answer(lambda: post_query(session, registry_url, timeout, GET_DOCUMENTS, {slot: wanted}, vihf))
    entries = []
    for entry in document_entries(body):
        if (entry.unique_id if unique_ids else entry.entry_uuid) not in wanted:
            continue  # not asked for: ignored rather than trusted
        if patient_ins_cx and entry.patient_id not in (None, patient_ins_cx):
            raise Iti18Error(outcome.Outcome(outcome.PERMANENT, "Success", (),
                                             f"entry {entry.entry_uuid} is registered for another patient"))
        entries.append(entry)
    log.info("ITI-18 GetDocuments: %d of %d found (%s)", len(entries), len(wanted),
             ", ".join(f"{e.unique_id} {e.availability}" for e in entries) or "none")
    return entries


def _answer(post) -> etree._Element:
    """The body child of a successful query reply; Iti18Error with the classified outcome otherwise."""
    try:
        reply = post()
    except requests.RequestException as exc:
        raise Iti18Error(outcome.classify_response(None, None, None, exc, sent=outcome.request_was_sent(exc))) from None
    result = outcome.classify_response(reply.status_code, reply.headers.get("Content-Type"), reply.content, sent=True)
    if not result.accepted:
        raise Iti18Error(result)
    try:
        return soap.body_child(_parse(reply))
    except (soap.SoapError, mtom.MtomError) as exc:  # classify_response parsed it already: not expected
        raise Iti18Error(outcome.Outcome(outcome.UNKNOWN, reply.status_code, (), str(exc))) from None


def _parse(reply: requests.Response) -> etree._Element:
    content_type = reply.headers.get("Content-Type")
    if mtom.is_multipart(content_type):
        return mtom.decode(content_type, reply.content)[0]
    return soap.parse_xml(reply.content)
