"""ITI-18 Registry Stored Query: is a submission set (by uniqueId) already in the DMP?

Used to reconcile an "unknown" or "duplicate" ITI-41 outcome. zeep builds the AdhocQueryRequest from
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

import requests
import zeep
import zeep.transports
from lxml import etree

from connector.dmp import mtom, outcome, soap
from connector.resources import schemas_dir

log = logging.getLogger(__name__)

GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
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


class _IntactSecurity(zeep.Plugin):
    """zeep's WS-Addressing plugin prunes the namespace declarations of the whole header, the VIHF's xmlns:xs
    among them (its xsi:type="xs:string" values need it, as in the GIE's examples): put the VIHF back as built."""

    def __init__(self, headers: list[etree._Element]):
        self.security = [h for h in headers if h.tag == f"{{{soap.WSSE}}}Security"]

    def egress(self, envelope, http_headers, operation, binding_options):
        header = envelope.find(f"{{{soap.SOAP12}}}Header")
        for pruned, intact in zip(header.findall(f"{{{soap.WSSE}}}Security"), self.security):
            header.replace(pruned, copy.deepcopy(intact))
        return envelope, http_headers


def post_stored_query(
    session: requests.Session, registry_url: str, timeout, submission_set_uid: str, vihf: etree._Element
) -> requests.Response:
    """POST GetSubmissionSetAndContents for one submission-set uniqueId; returns the raw HTTP response."""
    headers = _headers(registry_url, vihf)
    client = zeep.Client(_registry_wsdl(), transport=_Transport(session, timeout),
                         settings=zeep.Settings(raw_response=True, strict=True), plugins=[_IntactSecurity(headers)])
    service = client.create_service(_BINDING, registry_url)
    return getattr(service, _OPERATION)(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={
            "id": GET_SUBMISSION_SET_AND_CONTENTS,
            "Slot": [{"name": "$XDSSubmissionSetUniqueId",
                      "ValueList": {"_value_1": [{"Value": f"('{submission_set_uid}')"}]}}],
        },
        _soapheaders=headers,
    )


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
    try:
        reply = post_stored_query(session, registry_url, timeout, submission_set_uid, vihf)
    except requests.RequestException as exc:
        raise Iti18Error(outcome.classify_response(None, None, None, exc, sent=outcome.request_was_sent(exc))) from None
    result = outcome.classify_response(reply.status_code, reply.headers.get("Content-Type"), reply.content, sent=True)
    if not result.accepted:
        raise Iti18Error(result)
    try:
        body = soap.body_child(_parse(reply))
    except (soap.SoapError, mtom.MtomError) as exc:  # classify_response parsed it already: not expected
        raise Iti18Error(outcome.Outcome(outcome.UNKNOWN, reply.status_code, (), str(exc))) from None
    found = submission_set_found(body, submission_set_uid, patient_ins_cx)
    log.info("ITI-18: submission set %s %s", submission_set_uid, "found" if found else "not found")
    return found


def _parse(reply: requests.Response) -> etree._Element:
    content_type = reply.headers.get("Content-Type")
    if mtom.is_multipart(content_type):
        return mtom.decode(content_type, reply.content)[0]
    return soap.parse_xml(reply.content)
