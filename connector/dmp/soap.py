"""SOAP 1.2 envelopes with WS-Addressing and WS-Security headers, faults and ebRS RegistryResponses.

Shared by the connector's client and the sandbox DMP. The envelope declares only its own prefixes
(soap, wsa, wsse): the signed VIHF is canonicalised with InclusiveNamespaces "ds saml #default xsi",
so an ancestor declaring one of those would change its digest.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence

from lxml import etree

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
XOP = "http://www.w3.org/2004/08/xop/include"
XDSB = "urn:ihe:iti:xds-b:2007"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
NS = {"soap": SOAP12, "wsa": WSA, "wsse": WSSE, "xop": XOP, "xdsb": XDSB, "rs": RS, "rim": RIM, "lcm": LCM, "query": QUERY}

ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57_ACTION = "urn:ihe:iti:2010:UpdateDocumentSet"  # GIE TD3.3c / TD3.3d, registry WSDL of the GIE's annex

STATUS_PREFIX = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
SEVERITY_PREFIX = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:"
SUCCESS = STATUS_PREFIX + "Success"
PARTIAL_SUCCESS = STATUS_PREFIX + "PartialSuccess"
FAILURE = STATUS_PREFIX + "Failure"


class SoapError(ValueError):
    """The message is not a usable SOAP 1.2 envelope."""


def envelope(
    body: etree._Element,
    *,
    action: str,
    to: str,
    security: Iterable[etree._Element] = (),
    message_id: str | None = None,
) -> etree._Element:
    """A SOAP 1.2 envelope around a copy of `body`, with WS-Addressing 2005/08 headers and a
    wsse:Security header holding copies of `security` (the signed VIHF assertion)."""
    env = etree.Element(f"{{{SOAP12}}}Envelope", nsmap={"soap": SOAP12, "wsa": WSA})
    header = etree.SubElement(env, f"{{{SOAP12}}}Header")
    act = etree.SubElement(header, f"{{{WSA}}}Action")
    act.set(f"{{{SOAP12}}}mustUnderstand", "true")
    act.text = action
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = message_id or f"urn:uuid:{uuid.uuid4()}"
    etree.SubElement(header, f"{{{WSA}}}To").text = to
    reply_to = etree.SubElement(header, f"{{{WSA}}}ReplyTo")
    etree.SubElement(reply_to, f"{{{WSA}}}Address").text = ANONYMOUS
    security = list(security)
    if security:
        # no soap:mustUnderstand, as in every GIE example request: the DMP reads the VIHF without our asking,
        # and a SOAP stack without a WS-Security handler would answer a MustUnderstand fault
        sec = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        for element in security:
            sec.append(copy.deepcopy(element))
    etree.SubElement(env, f"{{{SOAP12}}}Body").append(copy.deepcopy(body))
    return env


def to_bytes(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def parse_xml(data: bytes) -> etree._Element:
    """Parse foreign XML safely: no entity expansion, no network, no DTD loading."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise SoapError(f"not well-formed XML: {exc}") from None


def body_child(env: etree._Element) -> etree._Element:
    """The first element of soap:Body; SoapError if `env` is not a SOAP 1.2 envelope."""
    if env.tag != f"{{{SOAP12}}}Envelope":
        raise SoapError(f"root element is {env.tag}, not a SOAP 1.2 Envelope")
    body = env.find(f"{{{SOAP12}}}Body")
    if body is None or len(body) == 0:
        raise SoapError("SOAP envelope without a Body element")
    return body[0]


def header_value(env: etree._Element, name: str, ns: str = WSA) -> str | None:
    el = env.find(f"{{{SOAP12}}}Header/{{{ns}}}{name}")
    return el.text.strip() if el is not None and el.text else None


def fault(code: str, reason: str, subcode: str | None = None, *, action: str | None = None) -> bytes:
    """A SOAP 1.2 fault envelope; `code` is "Sender" or "Receiver", `subcode` a QName text."""
    if code not in ("Sender", "Receiver", "MustUnderstand", "VersionMismatch", "DataEncodingUnknown"):
        raise ValueError(f"unknown SOAP 1.2 fault code {code!r}")
    env = etree.Element(f"{{{SOAP12}}}Envelope", nsmap={"soap": SOAP12, "wsa": WSA})
    header = etree.SubElement(env, f"{{{SOAP12}}}Header")
    etree.SubElement(header, f"{{{WSA}}}Action").text = action or "http://www.w3.org/2005/08/addressing/soap/fault"
    f = etree.SubElement(etree.SubElement(env, f"{{{SOAP12}}}Body"), f"{{{SOAP12}}}Fault")
    code_el = etree.SubElement(f, f"{{{SOAP12}}}Code")
    etree.SubElement(code_el, f"{{{SOAP12}}}Value").text = f"soap:{code}"
    if subcode:
        sub = etree.SubElement(etree.SubElement(code_el, f"{{{SOAP12}}}Subcode"), f"{{{SOAP12}}}Value")
        sub.text = subcode
    text = etree.SubElement(etree.SubElement(f, f"{{{SOAP12}}}Reason"), f"{{{SOAP12}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = reason
    return to_bytes(env)


def registry_response(
    status: str, errors: Sequence[tuple[str, str, str | None, str]] = ()
) -> etree._Element:
    """rs:RegistryResponse; `status` Success/PartialSuccess/Failure (or the full URN), each error
    (errorCode, codeContext, location, severity Error/Warning or the full URN)."""
    resp = etree.Element(f"{{{RS}}}RegistryResponse", nsmap={"rs": RS})
    resp.set("status", status if status.startswith("urn:") else STATUS_PREFIX + status)
    if errors:
        lst = etree.SubElement(resp, f"{{{RS}}}RegistryErrorList")
        worst = "Warning"
        for code, context, location, severity in errors:
            severity = severity if severity.startswith("urn:") else SEVERITY_PREFIX + severity
            worst = "Error" if severity.endswith(":Error") else worst
            err = etree.SubElement(lst, f"{{{RS}}}RegistryError")
            err.set("errorCode", code)
            err.set("codeContext", context)
            if location:
                err.set("location", location)
            err.set("severity", severity)
        lst.set("highestSeverity", SEVERITY_PREFIX + worst)
    return resp
