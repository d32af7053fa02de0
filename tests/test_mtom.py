"""MTOM/XOP encoding and decoding, and the SOAP 1.2 envelope helpers."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import os

import pytest
from lxml import etree

from connector.dmp import mtom, soap

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
ACTION = soap.ITI41_ACTION


def pnr_request(*doc_ids: str) -> etree._Element:
    req = etree.Element(f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": soap.XDSB})
    etree.SubElement(req, f"{{{soap.LCM}}}SubmitObjectsRequest", nsmap={"lcm": soap.LCM})
    for doc_id in doc_ids:
        etree.SubElement(req, f"{{{soap.XDSB}}}Document", id=doc_id)
    return req


def vihf() -> etree._Element:
    a = etree.Element(f"{{{SAML}}}Assertion", nsmap={"saml2": SAML}, ID="_vihf1", Version="2.0")
    etree.SubElement(a, f"{{{SAML}}}Issuer").text = "CN=ORG SIGN"
    return a


def make_envelope(*doc_ids: str) -> etree._Element:
    return soap.envelope(pnr_request(*doc_ids), action=ACTION, to="https://dmp.test/repository", security=[vihf()])


def test_encode_decode_round_trip_is_byte_identical():
    docs = {"Document01": os.urandom(1024 * 1024), "urn:uuid:7c1f a/b": b"%PDF-1.4\r\n--not a boundary\r\n"}
    env = make_envelope(*docs)
    content_type, body = mtom.encode(env, docs, action=ACTION)

    root, parts = mtom.decode(content_type, body)
    assert mtom.resolve_documents(root, parts) == docs
    assert len(parts) == 2
    # the caller's envelope is untouched
    assert env.find(f".//{{{soap.XOP}}}Include") is None


def test_headers_and_parts_follow_mtom():
    docs = {"Document01": b"\x00\x01binary\xff"}
    content_type, body = mtom.encode(make_envelope("Document01"), docs, action=ACTION)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    assert msg.get_content_type() == "multipart/related"
    assert msg.get_param("type") == "application/xop+xml"
    assert msg.get_param("start-info") == "application/soap+xml"
    assert msg.get_param("action") == ACTION
    root_part, doc_part = msg.get_payload()
    assert msg.get_param("start") == root_part["Content-ID"]
    assert root_part.get_content_type() == "application/xop+xml"
    assert root_part.get_param("type") == "application/soap+xml"
    assert root_part.get_param("charset").upper() == "UTF-8"
    assert root_part["Content-Transfer-Encoding"] == "binary"
    assert doc_part.get_content_type() == "application/octet-stream"
    assert doc_part.get_payload(decode=True) == docs["Document01"]

    root = soap.parse_xml(root_part.get_payload(decode=True))
    include = root.find(f".//{{{soap.XDSB}}}Document/{{{soap.XOP}}}Include")
    assert include.get("href") == "cid:" + doc_part["Content-ID"].strip("<>")
    # the VIHF stays inline, in wsse:Security; no base64 anywhere
    assert root.find(f"soap:Header/wsse:Security/{{{SAML}}}Assertion", soap.NS) is not None
    assert base64.b64encode(docs["Document01"]) not in body


def test_cid_is_url_encoded_in_href():
    assert mtom.cid_url("a b/c%@x.y") == "cid:a%20b%2Fc%25@x.y"


def test_only_documents_in_attachments_become_parts():
    content_type, body = mtom.encode(make_envelope("D1", "D2"), {"D1": b"one"}, action=ACTION)
    root, parts = mtom.decode(content_type, body)
    assert list(parts.values()) == [b"one"]
    with pytest.raises(mtom.MtomError, match="D3"):
        mtom.encode(make_envelope("D1"), {"D3": b"x"}, action=ACTION)


def test_decode_unquoted_boundary_no_start_and_inline_base64():
    xml = etree.tostring(make_envelope("D1"))
    xml = xml.replace(b'id="D1"/>', b'id="D1">' + base64.b64encode(b"inline bytes") + b"</xdsb:Document>")
    body = b"preamble\r\n--b1\r\nContent-Type: application/xop+xml\r\n\r\n" + xml + b"\r\n--b1--\r\n"
    root, parts = mtom.decode("Multipart/Related; boundary=b1; type=application/xop+xml", body)
    assert parts == {}
    assert mtom.resolve_documents(root, parts) == {"D1": b"inline bytes"}


def test_decode_tolerates_bare_lf():
    docs = {"D1": b"abc"}
    ct, body = mtom.encode(make_envelope("D1"), docs, action=ACTION)
    root, parts = mtom.decode(ct, body.replace(b"\r\n", b"\n"))
    assert mtom.resolve_documents(root, parts) == docs


@pytest.mark.parametrize(
    "content_type, body, message",
    [
        ("application/soap+xml", b"<x/>", "expected a multipart/related"),
        ("multipart/related", b"--x\r\n", "without a boundary"),
        ('multipart/related; boundary="zz"', b"no boundary here", "does not contain its boundary"),
        ('multipart/related; boundary="zz"', b"--zz\r\nContent-Type: a/b\r\n\r\n<x/>", "truncated"),
        ('multipart/related; boundary="zz"; start="<nope>"', b"--zz\r\nContent-ID: <a>\r\n\r\n<x/>\r\n--zz--", "start"),
        ('multipart/related; boundary="zz"', b"--zz\r\nContent-ID: <a>\r\n\r\n<x>\r\n--zz--", "not well-formed"),
    ],
)
def test_decode_rejects_malformed(content_type, body, message):
    with pytest.raises(mtom.MtomError, match=message):
        mtom.decode(content_type, body)


def test_resolve_rejects_missing_part():
    ct, body = mtom.encode(make_envelope("D1"), {"D1": b"x"}, action=ACTION)
    root, _ = mtom.decode(ct, body)
    with pytest.raises(mtom.MtomError, match="no MIME part"):
        mtom.resolve_documents(root, {})


def test_decode_does_not_expand_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>'
        f'<soap:Envelope xmlns:soap="{soap.SOAP12}"><soap:Body><a>&x;</a></soap:Body></soap:Envelope>'
    ).encode()
    root, _ = mtom.decode('multipart/related; boundary="q"', b"--q\r\n\r\n" + xml + b"\r\n--q--\r\n")
    assert b"TOP SECRET" not in etree.tostring(root)


def test_envelope_headers():
    env = soap.envelope(pnr_request(), action=ACTION, to="https://x/repository", message_id="urn:uuid:1")
    assert soap.header_value(env, "Action") == ACTION
    assert env.find("soap:Header/wsa:Action", soap.NS).get(f"{{{soap.SOAP12}}}mustUnderstand") == "true"
    assert soap.header_value(env, "MessageID") == "urn:uuid:1"
    assert soap.header_value(env, "To") == "https://x/repository"
    assert env.findtext("soap:Header/wsa:ReplyTo/wsa:Address", namespaces=soap.NS) == soap.ANONYMOUS
    assert soap.body_child(env).tag == f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest"
    # no namespace the VIHF's exclusive c14n lists (ds saml #default xsi) is declared by the envelope
    assert set(env.nsmap) == {"soap", "wsa"}
    fresh = soap.envelope(pnr_request(), action=ACTION, to="x")
    assert soap.header_value(fresh, "MessageID").startswith("urn:uuid:")


def test_fault_and_registry_response():
    f = soap.parse_xml(soap.fault("Sender", "bad request", "wsse:InvalidSecurity"))
    assert f.findtext("soap:Body/soap:Fault/soap:Code/soap:Value", namespaces=soap.NS) == "soap:Sender"
    assert f.findtext(".//soap:Subcode/soap:Value", namespaces=soap.NS) == "wsse:InvalidSecurity"
    assert f.findtext(".//soap:Reason/soap:Text", namespaces=soap.NS) == "bad request"
    rr = soap.registry_response("Failure", [("XDSRegistryBusy", "busy", None, "Error")])
    assert rr.get("status") == soap.FAILURE
    err = rr.find("rs:RegistryErrorList/rs:RegistryError", soap.NS)
    assert err.get("severity").endswith(":Error") and err.get("errorCode") == "XDSRegistryBusy"


def test_the_body_is_the_documents_themselves_not_a_copy():
    """`encode_body` keeps the attachments as pieces of the body (no copy of megabytes per attempt); its length
    and its joined bytes are `encode`'s."""
    docs = {"D1": os.urandom(200_000), "D2": b"two"}
    ct, body = mtom.encode_body(make_envelope("D1", "D2"), docs, action=ACTION)
    pieces = list(body)
    assert any(piece is docs["D1"] for piece in pieces) and any(piece is docs["D2"] for piece in pieces)
    assert len(body) == len(bytes(body)) == sum(map(len, pieces))
    env, parts = mtom.decode(ct, bytes(body))
    assert mtom.resolve_documents(env, parts) == docs
