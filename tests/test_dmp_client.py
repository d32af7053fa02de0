"""DmpClient against a real HTTPS server in a thread (client certificate required, test PKI: hostile_server.py)."""

from __future__ import annotations

import datetime as dt
import os
import ssl

import pytest
from hostile_server import running_server, server_context
from lxml import etree

from connector.config import CertificateSettings, DmpSettings, VihfSettings
from connector.dmp import iti18, mtom, soap, tls
from connector.dmp.client import DmpClient
from connector.trust import certs, pki
from connector.trust.vihf import build_vihf, verify_vihf

INS_CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
SS_UID = "1.2.250.1.999.42.3.1"


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory):
    return pki.create_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return pki.create_test_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def server(test_pki):
    with running_server(server_context(test_pki)) as srv:
        yield srv


def credential(p12, password_file) -> certs.Credential:
    return certs.load_credential(CertificateSettings(p12=p12, password_file=password_file))


def make_client(files: pki.PkiFiles, port: int, *, cred=None, ca_bundle=None, read_timeout=5.0,
                **limits) -> DmpClient:
    settings = DmpSettings(
        base_url=f"https://127.0.0.1:{port}/si-dmp-server/v2/services",
        ca_bundle=ca_bundle or files.ca_cert,
        environment="test",
        connect_timeout=2.0,
        read_timeout=read_timeout,
        **limits,
    )
    return DmpClient(settings, cred or credential(files.auth_cli_p12, files.auth_cli_password_file))


@pytest.fixture(scope="module")
def vihf(test_pki):
    sign = credential(test_pki.sign_p12, test_pki.sign_password_file)
    return build_vihf(sign, VihfSettings(), finess_geo="0B0999998", facility_type="SA01",
                      patient_ins_cx=INS_CX, subject_rpps="10001234567", subject_specialty="G15_10/SM26")


def pnr(*doc_ids):
    req = etree.Element(f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": soap.XDSB})
    etree.SubElement(req, f"{{{soap.LCM}}}SubmitObjectsRequest", nsmap={"lcm": soap.LCM})
    for doc_id in doc_ids:
        etree.SubElement(req, f"{{{soap.XDSB}}}Document", id=doc_id)
    return req


def success() -> bytes:
    return soap.to_bytes(soap.envelope(soap.registry_response("Success"), action="r", to="x"))


def send(client, vihf, docs=None):
    docs = docs or {"Document01": b"%PDF-1.4 one"}
    return client.provide_and_register(pnr(*docs), docs, vihf)


# --- ITI-41 ----------------------------------------------------------------------------------


def test_provide_and_register_sends_mtom_over_mutual_tls(server, test_pki, vihf):
    server.behaviour.body = success()
    docs = {"Document01": os.urandom(1024 * 1024), "Document02": b"%PDF-1.4\r\n" + os.urandom(1000)}
    with make_client(test_pki, server.server_port) as client:
        result = send(client, vihf, docs)
    assert result.kind == "accepted" and result.message_id.startswith("urn:uuid:")

    (path, headers, body, tls_version) = server.behaviour.requests[0]
    assert path == "/si-dmp-server/v2/services/repository"
    assert tls_version in ("TLSv1.2", "TLSv1.3")
    ct = headers["Content-Type"]
    assert ct.startswith("multipart/related;") and 'type="application/xop+xml"' in ct
    # sent piece by piece (mtom.Body), still under its length, not chunked
    assert headers["Content-Length"] == str(len(body)) and "Transfer-Encoding" not in headers
    assert 'start-info="application/soap+xml"' in ct and f'action="{soap.ITI41_ACTION}"' in ct
    env, parts = mtom.decode(ct, body)
    assert mtom.resolve_documents(env, parts) == docs  # byte-identical
    assert soap.header_value(env, "Action") == soap.ITI41_ACTION
    assert soap.header_value(env, "MessageID") == result.message_id
    assert soap.header_value(env, "To") == "https://127.0.0.1:%d/si-dmp-server/v2/services/repository" % server.server_port
    # the signed VIHF arrives in wsse:Security and its signature still verifies
    assertion = env.find("soap:Header/wsse:Security/{urn:oasis:names:tc:SAML:2.0:assertion}Assertion", soap.NS)
    assert assertion is not None
    verify_vihf(etree.tostring(assertion), test_pki.ca_cert.read_bytes())


def test_connections_are_pooled_and_only_the_configured_ca_is_trusted(server, test_pki, vihf):
    server.behaviour.body = success()
    with make_client(test_pki, server.server_port) as client:
        assert send(client, vihf).kind == "accepted"
        assert send(client, vihf).kind == "accepted"
        assert send(client, vihf).kind == "accepted"
        ctx = tls.client_context(client.settings.ca_bundle, credential(test_pki.auth_cli_p12, test_pki.auth_cli_password_file))
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.check_hostname
        # requests did not sneak certifi's public CAs into our context
        assert [c["subject"] for c in ctx.get_ca_certs()] == [ctx.get_ca_certs()[0]["subject"]]
    assert len(server.behaviour.requests) == 3
    # one TLS connection for the three requests: the server saw them all from the same client port
    assert len(set(server.behaviour.connections)) == 1, server.behaviour.connections


def test_503_is_transient(server, test_pki, vihf):
    server.behaviour.status, server.behaviour.content_type = 503, "text/html"
    server.behaviour.body = b"<html><body>maintenance</body></html>"
    with make_client(test_pki, server.server_port) as client:
        result = send(client, vihf)
    assert (result.kind, result.status, result.sent) == ("transient", 503, True)


def test_registry_error_reply_is_classified(server, test_pki, vihf):
    rr = soap.registry_response("Failure", [("XDSDuplicateUniqueIdInRegistry", "exists", SS_UID, "Error")])
    server.behaviour.body = soap.to_bytes(soap.envelope(rr, action="r", to="x"))
    with make_client(test_pki, server.server_port) as client:
        result = send(client, vihf)
    assert result.kind == "permanent" and result.duplicate_submission


def test_server_closing_after_reading_the_request_is_unknown(server, test_pki, vihf):
    server.behaviour.close_without_reply = True
    with make_client(test_pki, server.server_port) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("unknown", True)
    assert len(server.behaviour.requests) == 1


def test_slow_server_beyond_read_timeout_is_unknown(server, test_pki, vihf):
    server.behaviour.delay, server.behaviour.body = 1.5, success()
    with make_client(test_pki, server.server_port, read_timeout=0.3) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("unknown", True)
    assert "timed out" in result.message.lower()


def test_connection_refused_is_transient_not_sent(test_pki, vihf):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with make_client(test_pki, port) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("transient", False)
    assert "refused" in result.message.lower()


# --- hostile servers: redirects, trickles, huge and malformed replies --------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_never_followed(status, server, test_pki, vihf):
    with running_server(server_context(test_pki)) as elsewhere:
        server.behaviour.status = status
        server.behaviour.headers = {"Location": f"{elsewhere.url}/repository"}
        with make_client(test_pki, server.server_port) as client:
            result = send(client, vihf)
            found = client.find_submission_set(SS_UID, INS_CX, vihf)
    assert (result.kind, result.status) == ("permanent", status)
    assert f"redirect to {elsewhere.url}/repository refused" in result.message and "dmp.base_url" in result.message
    assert found is None
    assert len(server.behaviour.requests) == 2
    assert elsewhere.behaviour.requests == []  # neither the CDA nor the VIHF went to the other host


def test_a_trickling_reply_ends_at_the_request_deadline(server, test_pki, vihf):
    """One byte every 50 ms, each well within the read timeout: without a deadline, ~30 s for this reply."""
    server.behaviour.body, server.behaviour.trickle = success(), 0.05
    with make_client(test_pki, server.server_port, read_timeout=5.0, request_deadline=0.5) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("unknown", True)
    assert "dmp.request_deadline" in result.message
    assert server.behaviour.bytes_sent < len(success())


def test_a_reply_slower_than_the_deadline_but_not_the_read_timeout_ends_at_the_deadline(server, test_pki, vihf):
    server.behaviour.body, server.behaviour.delay = success(), 10.0
    with make_client(test_pki, server.server_port, read_timeout=30.0, request_deadline=0.5) as client:
        result = send(client, vihf)
        assert client.find_submission_set(SS_UID, INS_CX, vihf) is None
    assert (result.kind, result.sent) == ("unknown", True)
    assert "dmp.request_deadline" in result.message


@pytest.mark.parametrize("announced", [True, False])
def test_a_huge_reply_is_refused_past_the_cap(announced, server, test_pki, vihf):
    b = server.behaviour
    b.body_size, b.announce_length = 200 * 1024 * 1024, announced
    with make_client(test_pki, server.server_port, max_reply_bytes=1024 * 1024) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("unknown", True)
    assert "dmp.max_reply_bytes" in result.message
    assert b.bytes_sent < b.body_size  # the client hung up instead of reading it all


def test_the_connection_is_reused_after_a_bounded_exchange(server, test_pki, vihf):
    server.behaviour.body = success()
    server.protocol_version = "HTTP/1.1"
    with make_client(test_pki, server.server_port) as client:
        assert [send(client, vihf).kind for _ in range(3)] == ["accepted"] * 3
    assert len(server.behaviour.requests) == 3


@pytest.mark.parametrize("content_type, body, kind", [
    # claims MTOM, is not: a reply we cannot read, after the DMP accepted the request
    ('multipart/related; type="application/xop+xml"; boundary="b1"; start="<r@x>"', b"--b1\r\ngarbage", "unknown"),
    ('multipart/related; type="application/xop+xml"', success(), "unknown"),  # no boundary
    ("application/json", b'{"status": "ok"}', "unknown"),
    ("text/html", b"<html><body>Welcome</body></html>", "unknown"),
    (None, success(), "accepted"),  # no Content-Type, a readable SOAP reply: its content decides
    ("text/plain", success(), "accepted"),
    ("application/soap+xml", b"\x00\xff" * 100, "unknown"),
])
def test_malformed_or_mistyped_replies(content_type, body, kind, server, test_pki, vihf):
    server.behaviour.content_type, server.behaviour.body = content_type, body
    with make_client(test_pki, server.server_port) as client:
        result = send(client, vihf)
    assert result.kind == kind, result.message


# --- TLS failures: all "transient, not sent", with a message that says what went wrong ---------


def test_server_offering_only_tls_1_1_is_refused(test_pki, vihf):
    with running_server(server_context(test_pki, max_version=ssl.TLSVersion.TLSv1_1)) as srv:
        with make_client(test_pki, srv.server_port) as client:
            result = send(client, vihf)
    assert (result.kind, result.sent) == ("transient", False)
    assert "protocol" in result.message.lower()
    assert srv.behaviour.requests == []


def test_untrusted_server_certificate(other_pki, test_pki, vihf):
    with running_server(server_context(other_pki)) as srv:  # server certificate from another CA
        with make_client(test_pki, srv.server_port) as client:
            result = send(client, vihf)
    assert (result.kind, result.sent) == ("transient", False)
    assert "certificate verify failed" in result.message


@pytest.mark.parametrize("bad", ["expired", "other_ca"])
def test_client_certificate_refused_by_the_server(bad, server, test_pki, vihf, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    kwargs = (
        dict(not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1))
        if bad == "expired" else dict(other_ca=True)
    )
    p12, password_file = pki.issue_bad_p12(test_pki, tmp_path / f"{bad}.p12", "auth_cli", **kwargs)
    server.behaviour.body = success()
    with make_client(test_pki, server.server_port, cred=credential(p12, password_file)) as client:
        result = send(client, vihf)
    assert (result.kind, result.sent) == ("transient", False), result.message
    assert "AUTH_CLI certificate" in result.message
    assert server.behaviour.requests == []


# --- ITI-18 ----------------------------------------------------------------------------------


def adhoc_response(*uids: str, patient=INS_CX) -> bytes:
    q = etree.Element(f"{{{soap.QUERY}}}AdhocQueryResponse", nsmap={"query": soap.QUERY, "rim": soap.RIM})
    q.set("status", soap.SUCCESS)
    objects = etree.SubElement(q, f"{{{soap.RIM}}}RegistryObjectList")
    for uid in uids:
        pkg = etree.SubElement(objects, f"{{{soap.RIM}}}RegistryPackage", id="urn:uuid:1")
        for scheme, value in ((iti18.SS_UNIQUE_ID_SCHEME, uid), (iti18.SS_PATIENT_ID_SCHEME, patient)):
            etree.SubElement(pkg, f"{{{soap.RIM}}}ExternalIdentifier", identificationScheme=scheme, value=value)
    return soap.to_bytes(soap.envelope(q, action="urn:ihe:iti:2007:RegistryStoredQueryResponse", to="x"))


def test_find_submission_set(server, test_pki, vihf):
    b = server.behaviour
    with make_client(test_pki, server.server_port) as client:
        b.body = adhoc_response(SS_UID)
        assert client.find_submission_set(SS_UID, INS_CX, vihf) is True
        b.body = adhoc_response()
        assert client.find_submission_set(SS_UID, INS_CX, vihf) is False
        b.body = adhoc_response("1.2.3.other")
        assert client.find_submission_set(SS_UID, INS_CX, vihf) is False
        b.status, b.body = 500, soap.fault("Receiver", "registry down")
        assert client.find_submission_set(SS_UID, INS_CX, vihf) is None

    path, headers, body, _ = b.requests[0]
    assert path.endswith("/registry") and headers["Content-Type"].startswith("application/soap+xml")
    env = soap.parse_xml(body)
    assert soap.header_value(env, "Action") == soap.ITI18_ACTION
    assert env.find("soap:Header/wsa:Action", soap.NS).get(f"{{{soap.SOAP12}}}mustUnderstand") == "true"
    assert soap.header_value(env, "To").endswith("/registry")
    # each header once: zeep's own WS-Addressing headers (a second Action, MessageID, To) are not sent
    assert [etree.QName(h).localname for h in env.find("soap:Header", soap.NS)] == \
        ["Action", "MessageID", "To", "ReplyTo", "Security"]
    assertion = env.find("soap:Header/wsse:Security/{urn:oasis:names:tc:SAML:2.0:assertion}Assertion", soap.NS)
    verify_vihf(etree.tostring(assertion), test_pki.ca_cert.read_bytes())
    query = soap.body_child(env)
    assert query.tag == f"{{{soap.QUERY}}}AdhocQueryRequest"
    assert query.find("rim:AdhocQuery", soap.NS).get("id") == iti18.GET_SUBMISSION_SET_AND_CONTENTS
    slot = query.find("rim:AdhocQuery/rim:Slot", soap.NS)
    assert slot.get("name") == "$XDSSubmissionSetUniqueId"
    assert slot.findtext("rim:ValueList/rim:Value", namespaces=soap.NS) == f"('{SS_UID}')"


def test_find_submission_set_for_another_patient_is_an_error(server, test_pki, vihf):
    server.behaviour.body = adhoc_response(SS_UID, patient="123^^^&1.2.250.1.213.1.4.10&ISO^NH")
    with make_client(test_pki, server.server_port) as client:
        with pytest.raises(iti18.Iti18Error, match="another patient"):
            iti18.find_submission_set(client.session, client.settings.registry_url, client.timeout,
                                      SS_UID, INS_CX, vihf)


@pytest.mark.parametrize("module", ["zeep", "signxml"])
def test_a_run_does_not_load_what_it_may_not_need(module):
    """zeep (ITI-18 only: a resend, a duplicate, a replacement; 3 MB and 0.15 s) and signxml (verifying a
    signature: the sandbox and the tests; 5.7 MB) are not loaded by every run."""
    import subprocess
    import sys

    code = f"import sys, connector.cli, connector.actions.run; print({module!r} in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
