"""Classification of DMP replies and transport failures (table-driven over tests/responses/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from connector.dmp import soap
from connector.dmp.outcome import Outcome, classify_response, describe_exception

RESPONSES = Path(__file__).parent / "responses"
SOAP_CT = 'application/soap+xml; charset=UTF-8; action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"'
MTOM_CT = (
    'multipart/related; type="application/xop+xml"; boundary="uuid:6b62f3c1-5d8e-4f2a-9c1b-1d2e3f4a5b6c"; '
    'start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"'
)

# Every reply here is hand-written in the shape of an IHE XDS.b / SOAP 1.2 reply (responses/README.md): no
# capture of the real DMP is public. The test names say so.
CASES = [
    # file, HTTP status, Content-Type, kind, status, error codes
    ("success.xml", 200, SOAP_CT, "accepted", "Success", []),
    ("success_with_warning.xml", 200, SOAP_CT, "accepted_with_warnings", "Success", ["XDSExtraMetadataNotSaved"]),
    ("partial_success.xml", 200, SOAP_CT, "accepted_with_warnings", "PartialSuccess", ["XDSExtraMetadataNotSaved"]),
    ("multipart_success.bin", 200, MTOM_CT, "accepted", "Success", []),
    ("registry_busy.xml", 200, SOAP_CT, "transient", "Failure", ["XDSRegistryBusy"]),
    ("repository_busy.xml", 500, SOAP_CT, "transient", "Failure", ["XDSRepositoryBusy"]),
    ("repository_out_of_resources.xml", 200, SOAP_CT, "transient", "Failure", ["XDSRepositoryOutOfResources"]),
    ("registry_not_available.xml", 200, SOAP_CT, "transient", "Failure", ["XDSRegistryNotAvailable"]),
    ("duplicate_submission_set.xml", 200, SOAP_CT, "permanent", "Failure", ["XDSDuplicateUniqueIdInRegistry"]),
    ("non_identical_hash.xml", 200, SOAP_CT, "permanent", "Failure", ["XDSNonIdenticalHash"]),
    ("unknown_patient.xml", 200, SOAP_CT, "permanent", "Failure", ["XDSUnknownPatientId"]),
    # one permanent error among transient ones: resending would fail again
    ("metadata_error_and_busy.xml", 200, SOAP_CT, "permanent", "Failure", ["XDSRegistryMetadataError", "XDSRegistryBusy"]),
    ("dmp_specific_error.xml", 200, SOAP_CT, "permanent", "Failure", ["DMPPatientOpposed"]),
    ("failure_without_errors.xml", 200, SOAP_CT, "permanent", "Failure", []),
    ("fault_sender.xml", 400, SOAP_CT, "permanent", "Fault:Sender", []),
    ("fault_receiver.xml", 500, SOAP_CT, "transient", "Fault:Receiver", []),
    # a SOAP content decides over the HTTP status
    ("fault_receiver.xml", 200, SOAP_CT, "transient", "Fault:Receiver", []),
    ("registry_busy.xml", 400, "text/xml", "transient", "Failure", ["XDSRegistryBusy"]),
    # unreadable replies: by HTTP status
    ("html_503.html", 503, "text/html", "transient", 503, []),
    ("html_503.html", 502, "text/html", "transient", 502, []),
    ("html_503.html", 504, "text/html", "unknown", 504, []),
    ("html_404.html", 404, "text/html", "permanent", 404, []),
    ("html_404.html", 429, "text/html", "transient", 429, []),
    ("html_404.html", 200, "text/html", "unknown", 200, []),
    ("empty.bin", 503, None, "transient", 503, []),
    ("empty.bin", 200, SOAP_CT, "unknown", 200, []),
    ("empty.bin", 403, None, "permanent", 403, []),
    ("success.xml", 200, MTOM_CT, "unknown", 200, []),  # claims MTOM but is not: unreadable
    # internal errors: ITI-41 is atomic, a retry is safe; the retry lifetime ends a persistent one
    ("registry_error.xml", 200, SOAP_CT, "transient", "Failure", ["XDSRegistryError"]),
    ("repository_error.xml", 500, SOAP_CT, "transient", "Failure", ["XDSRepositoryError"]),
    ("html_404.html", 408, "text/html", "transient", 408, []),
    ("unknown_status.xml", 200, SOAP_CT, "unknown", "Pending", []),  # neither registered nor refused: ask ITI-18
    ("envelope_without_body.xml", 200, SOAP_CT, "unknown", 200, []),
    ("envelope_without_body.xml", 500, SOAP_CT, "transient", 500, []),
    # an Error-severity error under a Success status is an error, not a warning
    ("success_with_error.xml", 200, SOAP_CT, "permanent", "Success", ["XDSRegistryMetadataError", "XDSExtraMetadataNotSaved"]),
    # a WS-Security fault is the sender's (bad VIHF): resending the same token for days will not help
    ("fault_receiver_security.xml", 500, SOAP_CT, "permanent", "Fault:Receiver", []),
]


@pytest.mark.parametrize("name, http, content_type, kind, status, codes", CASES)
def test_classify_hand_written_reply(name, http, content_type, kind, status, codes):
    body = (RESPONSES / name).read_bytes()
    outcome = classify_response(http, content_type, body, sent=True)
    assert outcome.kind == kind, outcome.message
    assert outcome.status == status
    assert [e.code for e in outcome.errors] == codes
    assert outcome.sent
    assert outcome.accepted == kind.startswith("accepted")
    assert outcome.duplicate_submission == (name == "duplicate_submission_set.xml")
    assert outcome.message


def test_success_with_an_error_severity_error_keeps_its_transient_codes_transient():
    rr = soap.registry_response("Success", [("XDSRegistryBusy", "busy", None, "Error")])
    outcome = classify_response(200, SOAP_CT, soap.to_bytes(soap.envelope(rr, action="x", to="y")), sent=True)
    assert outcome.kind == "transient" and "Error-severity" in outcome.message


@pytest.mark.parametrize("subcode", ["wsse:InvalidSecurity", "wsse:InvalidSecurityToken", "wsse:FailedAuthentication",
                                     "wsse:FailedCheck", "wsse:SecurityTokenUnavailable", "wsa:InvalidAddressingHeader",
                                     "wsa:MessageAddressingHeaderRequired", "wsa:ActionNotSupported"])
def test_a_security_or_addressing_fault_is_permanent_whatever_its_code(subcode):
    body = soap.fault("Receiver", "refused", subcode)
    outcome = classify_response(500, SOAP_CT, body, sent=True)
    assert outcome.kind == "permanent" and subcode in outcome.message


def test_error_details_are_kept_as_the_registry_wrote_them():
    outcome = classify_response(200, SOAP_CT, (RESPONSES / "duplicate_submission_set.xml").read_bytes(), sent=True)
    (error,) = outcome.errors
    assert error.context == "UniqueId 1.2.250.1.999.42.3.20261120.1 already exists in the registry"
    assert error.location == "1.2.250.1.999.42.3.20261120.1"
    assert error.severity == "Error"
    assert "XDSDuplicateUniqueIdInRegistry" in outcome.message


def test_fault_message_has_code_subcode_and_reason():
    outcome = classify_response(400, SOAP_CT, (RESPONSES / "fault_sender.xml").read_bytes(), sent=True)
    assert outcome.message == "SOAP fault Sender (wsse:InvalidSecurityToken): Jeton VIHF invalide : signature incorrecte"


def test_html_body_is_not_copied_into_the_message():
    outcome = classify_response(503, "text/html", (RESPONSES / "html_503.html").read_bytes(), sent=True)
    assert "maintenance" not in outcome.message and "text/html" in outcome.message


def test_sandbox_helpers_round_trip():
    rr = soap.registry_response("Failure", [("XDSRepositoryBusy", "busy", None, "Error")])
    body = soap.to_bytes(soap.envelope(rr, action="x", to="y"))
    assert classify_response(200, SOAP_CT, body, sent=True).kind == "transient"
    assert classify_response(500, SOAP_CT, soap.fault("Receiver", "down"), sent=True).kind == "transient"


@pytest.mark.parametrize(
    "exc, sent, kind",
    [
        (requests.ConnectionError("[Errno 111] Connection refused"), False, "transient"),
        (requests.exceptions.SSLError("certificate verify failed"), False, "transient"),
        (requests.ConnectTimeout("connect timeout"), False, "transient"),
        (requests.ReadTimeout("read timed out"), True, "unknown"),
        (requests.exceptions.ChunkedEncodingError("connection reset"), True, "unknown"),
    ],
)
def test_classify_exceptions(exc, sent, kind):
    outcome = classify_response(None, None, None, exc, sent=sent)
    assert outcome.kind == kind and outcome.sent == sent
    assert str(exc) in outcome.message


def test_describe_exception_digs_to_the_root_cause():
    root = OSError("[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")
    wrapper = requests.exceptions.SSLError(requests.exceptions.RetryError(root))
    assert describe_exception(wrapper) == "SSLError: [SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version"


def test_outcome_is_frozen():
    with pytest.raises(AttributeError):
        Outcome("accepted", "Success").kind = "permanent"  # type: ignore[misc]
