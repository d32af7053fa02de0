"""What a DMP reply (or the lack of one) means for the documents that were submitted.

Kinds:
- accepted: registered.                     - accepted_with_warnings: registered (PartialSuccess or warnings).
- transient: not registered, try again later (busy registry, 5xx, 429, nothing sent at all).
- permanent: not registered and resending the same thing will fail again (needs a human).
- unknown: the request left and no usable answer came back: it may or may not be registered, so the
  caller reconciles with ITI-18 before resending the same unique ids.

Decisions the standards leave open (documented here, tested in tests/test_outcome.py):
- A reply we cannot read (HTML error page, empty body, not SOAP): transient for 5xx/429/408, unknown for
  2xx (the DMP accepted the request and may have registered it) and 504 (a gateway gave up while the DMP
  may still have processed it), permanent for any other 3xx/4xx (wrong URL, rejected by a proxy).
- A SOAP content (fault or RegistryResponse) decides over the HTTP status it came with.
- A redirect is never followed (exchange.py) and is permanent: the configured URL is wrong, or a hop is hostile.
- No complete reply by the request deadline, or a reply over the size cap: unknown (the request was sent).
- XDSRegistryError / XDSRepositoryError ("internal error, no more detailed code") count as transient:
  ITI-41 is atomic, so a retry is safe, and the retry lifetime turns a persistent one into FAILED.
- Failure without any RegistryError is permanent; an unknown status value is unknown.
- Success or PartialSuccess with an Error-severity RegistryError is a Failure (not registered, by its codes).
- A SOAP fault is transient when its code is Receiver, unless its subcode refuses the message itself
  (WS-Security: a bad VIHF; WS-Addressing): that is permanent, never retried for the whole lifetime.
Messages carry error codes and the registry's own codeContext, never patient data.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

import requests
import urllib3.exceptions
from lxml import etree

from connector.dmp import exchange, mtom, soap

ACCEPTED, WARNINGS, TRANSIENT, PERMANENT, UNKNOWN = (
    "accepted", "accepted_with_warnings", "transient", "permanent", "unknown",
)  # fmt: skip

# IHE ITI TF-3 Table 4.2.4.1-2 (busy, out of resources, registry not reachable by the repository,
# XCA timeouts/unavailable community) and the internal errors (see the module docstring).
TRANSIENT_CODES = frozenset({
    "XDSRegistryBusy", "XDSRepositoryBusy",
    "XDSRegistryOutOfResources", "XDSRepositoryOutOfResources",
    "XDSRegistryNotAvailable", "XDSRepositoryNotAvailable",
    "XDSRegistryError", "XDSRepositoryError",
    "XDSUnavailableCommunity", "XDSTimeout",
})  # fmt: skip
DUPLICATE_UNIQUE_ID = "XDSDuplicateUniqueIdInRegistry"
# SOAP fault subcodes that refuse the message itself, whatever the fault's code (servers send some as Receiver):
# WS-Security (OASIS WSS 1.1 §12: the VIHF token, its signature) and WS-Addressing (W3C WS-Addressing 1.0 SOAP
# Binding §6.4: our headers). The same message would be refused again for the whole retry lifetime.
REFUSED_SUBCODES = frozenset({
    "UnsupportedSecurityToken", "UnsupportedAlgorithm", "InvalidSecurity", "InvalidSecurityToken",
    "FailedAuthentication", "FailedCheck", "SecurityTokenUnavailable", "MessageExpired",
    "InvalidAddressingHeader", "InvalidAddress", "InvalidEPR", "InvalidCardinality", "MissingAddressInEPR",
    "DuplicateMessageID", "ActionMismatch", "MessageAddressingHeaderRequired", "ActionNotSupported",
})  # fmt: skip
# How OpenSSL reports a server refusing our client certificate (TLS 1.3: often a bare EOF).
_TLS_REFUSED_HINTS = re.compile(
    r"EOF occurred in violation of protocol|ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_(EXPIRED|REQUIRED|UNKNOWN))"
)


@dataclass(frozen=True)
class RegistryError:
    code: str
    context: str
    location: str | None
    severity: str  # "Error" or "Warning"


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: str | int | None  # RegistryResponse status (short form), else the HTTP status, else None
    errors: tuple[RegistryError, ...] = ()
    message: str = ""
    sent: bool = True  # False: the request never reached the DMP (nothing to reconcile)
    message_id: str | None = None  # WS-Addressing MessageID of the request, for the audit trail
    # Why nothing reached the DMP: "unreachable" (name resolution, connection refused or timed out) or "tls" (the
    # TLS handshake failed either way: server certificate not trusted, wrong host name, protocol version, our
    # certificate refused). Those are configuration or outage problems a human must see at once.
    cause: str | None = None

    @property
    def accepted(self) -> bool:
        return self.kind in (ACCEPTED, WARNINGS)

    @property
    def duplicate_submission(self) -> bool:
        """The registry already holds this submission set's uniqueId (XDSDuplicateUniqueIdInRegistry is
        raised for submission sets and folders only): probably our own earlier send; confirm with ITI-18."""
        return self.kind == PERMANENT and any(e.code == DUPLICATE_UNIQUE_ID for e in self.errors)


def classify_response(
    http_status: int | None,
    content_type: str | None,
    body: bytes | None,
    exc: BaseException | None = None,
    *,
    sent: bool,
) -> Outcome:
    """Classify an HTTP exchange: a reply (status, Content-Type, body), or the exception that ended it
    (`sent` tells whether the request had been fully sent when it happened)."""
    if isinstance(exc, exchange.RedirectRefused):  # wrong URL or a hostile hop: resending will not help
        return Outcome(PERMANENT, exc.status, message=f"{exc} refused: DMP calls never follow a redirect"
                                                      " (check dmp.base_url)")
    if exc is not None:
        reason = describe_exception(exc)
        if not sent:
            tls = _is_tls_failure(exc)
            if _TLS_REFUSED_HINTS.search(reason):
                reason += (" (the server ended the TLS handshake: check that the AUTH_CLI certificate is"
                           " valid and issued by a CA the DMP trusts)")
            elif tls:
                reason += (" (TLS handshake with the DMP failed: check dmp.base_url's host name, dmp.ca_bundle"
                           " and that the server speaks TLS 1.2 or later)")
            return Outcome(TRANSIENT, http_status, message=f"not sent: {reason}", sent=False,
                           cause="tls" if tls else "unreachable")
        return Outcome(UNKNOWN, http_status, message=f"sent, no usable reply: {reason}")

    root = _parse(content_type, body or b"")
    if root is not None:
        outcome = _classify_xml(root, http_status)
        if outcome is not None:
            return outcome
    what = "empty reply" if not body else f"unreadable reply ({_media_type(content_type) or 'no Content-Type'})"
    return Outcome(_kind_for_http(http_status), http_status, message=f"HTTP {http_status}: {what}")


def describe_exception(exc: BaseException) -> str:
    """A short, patient-free description: the exception type and its innermost cause (requests and
    urllib3 nest the ssl/socket error several levels deep)."""
    inner, seen = exc, set()
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = getattr(inner, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in inner.args if isinstance(a, BaseException)), None) or inner.__cause__
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    text = str(inner) or type(inner).__name__
    return f"{type(exc).__name__}: {text}"


# Failures that happen before a single byte of the HTTP request reaches the DMP's application: name
# resolution, TCP connect, TLS handshake (a TLS alert means the peer refused us at the TLS layer).
_NOT_SENT = (
    requests.ConnectTimeout,
    requests.exceptions.SSLError,
    requests.exceptions.InvalidURL,
    urllib3.exceptions.NewConnectionError,  # includes NameResolutionError, connection refused
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.SSLError,
    ssl.SSLError,
    ConnectionRefusedError,
)


def _chain(exc: BaseException):
    """`exc` and every exception it wraps (args, urllib3's reason, __cause__), each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [a for a in (*e.args, getattr(e, "reason", None), e.__cause__) if isinstance(a, BaseException)]


def _is_tls_failure(exc: BaseException) -> bool:
    return any(isinstance(e, (ssl.SSLError, requests.exceptions.SSLError, urllib3.exceptions.SSLError))
               for e in _chain(exc))


def request_was_sent(exc: BaseException) -> bool:
    """False when `exc` (or what it wraps) shows the request never reached the server; True otherwise
    (read timeout, connection reset or closed while waiting for the reply: it may have been processed)."""
    return not any(isinstance(e, _NOT_SENT) for e in _chain(exc))


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parse(content_type: str | None, body: bytes) -> etree._Element | None:
    if not body.strip():
        return None
    try:
        if mtom.is_multipart(content_type):
            return mtom.decode(content_type, body)[0]
        return soap.parse_xml(body)
    except (mtom.MtomError, soap.SoapError):
        return None


def _kind_for_http(status: int | None) -> str:
    if status is None or 200 <= status < 300 or status == 504:
        return UNKNOWN
    if status >= 500 or status in (408, 429):
        return TRANSIENT
    return PERMANENT


def _classify_xml(root: etree._Element, http_status: int | None) -> Outcome | None:
    try:
        payload = soap.body_child(root) if root.tag == f"{{{soap.SOAP12}}}Envelope" else root
    except soap.SoapError:
        return None
    if payload.tag == f"{{{soap.SOAP12}}}Fault":
        return _classify_fault(payload)
    if payload.get("status") is not None and etree.QName(payload).namespace in (soap.RS, soap.QUERY):
        return classify_registry_response(payload)
    return None


def _classify_fault(fault: etree._Element) -> Outcome:
    code = fault.findtext("soap:Code/soap:Value", "", soap.NS).strip()
    code = code.rsplit(":", 1)[-1]
    subcode = fault.findtext("soap:Code/soap:Subcode/soap:Value", None, soap.NS)
    reason = " ".join(fault.findtext("soap:Reason/soap:Text", "", soap.NS).split())
    subcode = subcode.strip() if subcode else None
    refused = subcode is not None and subcode.rsplit(":", 1)[-1] in REFUSED_SUBCODES
    kind = TRANSIENT if code == "Receiver" and not refused else PERMANENT
    detail = f" ({subcode})" if subcode else ""
    return Outcome(kind, f"Fault:{code}", message=f"SOAP fault {code}{detail}: {reason}")


def registry_errors(response: etree._Element) -> tuple[RegistryError, ...]:
    return tuple(
        RegistryError(
            code=e.get("errorCode", ""),
            context=e.get("codeContext", ""),
            location=e.get("location") or None,
            severity=e.get("severity", "Error").rsplit(":", 1)[-1],
        )
        for e in response.iterfind("rs:RegistryErrorList/rs:RegistryError", soap.NS)
    )


def classify_registry_response(response: etree._Element) -> Outcome:
    """Classify an rs:RegistryResponse (or a query:AdhocQueryResponse, which has the same status/errors)."""
    status = response.get("status", "").rsplit(":", 1)[-1]
    errors = registry_errors(response)
    failing = [e for e in errors if e.severity != "Warning"]
    codes = ", ".join(dict.fromkeys(e.code for e in errors)) or "no RegistryError"
    if status == "Success" and not errors:
        return Outcome(ACCEPTED, status, errors, "Success")
    if status in ("Success", "PartialSuccess") and not failing:
        return Outcome(WARNINGS, status, errors, f"{status} with {codes}")
    if status not in ("Success", "PartialSuccess", "Failure"):
        return Outcome(UNKNOWN, status or None, errors, f"unexpected RegistryResponse status {status!r}")
    transient = failing and all(e.code in TRANSIENT_CODES for e in failing)
    what = "Failure" if status == "Failure" else f"{status} with Error-severity errors, counted as a Failure"
    return Outcome(TRANSIENT if transient else PERMANENT, status, errors, f"{what}: {codes}")
