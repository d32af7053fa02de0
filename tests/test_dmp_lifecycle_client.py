"""DmpClient's lifecycle calls against a real HTTPS server in a thread (hostile_server.py): ITI-57 Update Document
Set, classified like any DMP reply, and ITI-18 GetDocuments (entries and their availability status, None when no
answer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_server import running_server, server_context
from lxml import etree

from connector.dmp import iti18, outcome, soap
from connector.payload import update, validate
from connector.payload.lifecycle import APPROVED, DELETED, DEPRECATED
from connector.trust.vihf import verify_vihf
from test_dmp_client import INS_CX, make_client, test_pki, vihf  # noqa: F401 (fixtures)
from test_update import ours

GIE_MESSAGES = Path(__file__).resolve().parents[1] / "schemas/gie-dmp-package/messages"
TD31_REPLY = GIE_MESSAGES / "TD3.1_Recherche_de_document_reponse.xml"
TD31_REQUEST = GIE_MESSAGES / "TD3.1_Recherche_de_document_requete.xml"
ENTRY_1 = "urn:uuid:11111111-1111-4111-8111-111111111111"
ENTRY_2 = "urn:uuid:22222222-2222-4222-8222-222222222222"


@pytest.fixture
def server(test_pki):  # noqa: F811
    with running_server(server_context(test_pki)) as srv:
        yield srv


def registry_reply(status="Success", errors=()) -> bytes:
    body = soap.registry_response(status, errors)
    return soap.to_bytes(soap.envelope(body, action="urn:ihe:iti:2010:UpdateDocumentSet-Response", to="x"))


def entries_reply(*entries: tuple[str, str, str], patient=INS_CX) -> bytes:
    """An AdhocQueryResponse holding DocumentEntries (entryUUID, uniqueId, status)."""
    q = etree.Element(f"{{{soap.QUERY}}}AdhocQueryResponse", nsmap={"query": soap.QUERY, "rim": soap.RIM})
    q.set("status", soap.SUCCESS)
    objects = etree.SubElement(q, f"{{{soap.RIM}}}RegistryObjectList")
    for entry_uuid, uid, status in entries:
        eo = etree.SubElement(objects, f"{{{soap.RIM}}}ExtrinsicObject", id=entry_uuid, status=status)
        for scheme, value in ((iti18.DE_UNIQUE_ID_SCHEME, uid), (iti18.DE_PATIENT_ID_SCHEME, patient)):
            etree.SubElement(eo, f"{{{soap.RIM}}}ExternalIdentifier", identificationScheme=scheme, value=value)
    return soap.to_bytes(soap.envelope(q, action="urn:ihe:iti:2007:RegistryStoredQueryResponse", to="x"))


# --- ITI-57 -----------------------------------------------------------------------------------------


def test_an_update_goes_to_the_registry_as_soap_with_the_vihf(server, test_pki, vihf, tmp_path):  # noqa: F811
    server.behaviour.body = registry_reply()
    with make_client(test_pki, server.server_port) as client:
        result = client.update_document_set(ours(tmp_path), vihf)
    assert result.kind == outcome.ACCEPTED and result.message_id
    path, headers, body, _ = server.behaviour.requests[0]
    assert path.endswith("/registry")
    assert headers["Content-Type"] == f'application/soap+xml; charset=UTF-8; action="{soap.ITI57_ACTION}"'
    env = soap.parse_xml(body)
    assert soap.header_value(env, "Action") == soap.ITI57_ACTION
    assert soap.header_value(env, "MessageID") == result.message_id
    assert soap.header_value(env, "To").endswith("/registry")
    assertion = env.find("soap:Header/wsse:Security/{urn:oasis:names:tc:SAML:2.0:assertion}Assertion", soap.NS)
    verify_vihf(etree.tostring(assertion), test_pki.ca_cert.read_bytes())
    request = soap.body_child(env)
    assert update.update_errors(request) == [] and update.parse_update(request).changes[0].new_status == DELETED


@pytest.mark.parametrize("status, body, kind, codes", [
    (200, registry_reply("Failure", [("UnresolvedReferenceException", "entrée inconnue", None, "Error")]),
     outcome.PERMANENT, ["UnresolvedReferenceException"]),
    (200, registry_reply("Failure", [("XDSRegistryBusy", "occupé", None, "Error")]), outcome.TRANSIENT, ["XDSRegistryBusy"]),
    (500, soap.fault("Receiver", "registry down"), outcome.TRANSIENT, []),
    (200, b"", outcome.UNKNOWN, []),
])
def test_an_update_reply_is_classified(server, test_pki, vihf, tmp_path, status, body, kind, codes):  # noqa: F811
    server.behaviour.status, server.behaviour.body = status, body
    with make_client(test_pki, server.server_port) as client:
        result = client.update_document_set(ours(tmp_path), vihf)
    assert result.kind == kind and [e.code for e in result.errors] == codes


def test_an_update_that_never_left_is_transient_not_sent(test_pki, vihf, tmp_path):  # noqa: F811
    with running_server(server_context(test_pki)) as srv:
        port = srv.server_port
    with make_client(test_pki, port) as client:  # nothing listens there any more
        result = client.update_document_set(ours(tmp_path), vihf)
    assert (result.kind, result.sent) == (outcome.TRANSIENT, False)


# --- ITI-18 GetDocuments --------------------------------------------------------------------------


def test_get_documents_by_unique_id_gives_each_entry_and_its_status(server, test_pki, vihf):  # noqa: F811
    server.behaviour.body = entries_reply((ENTRY_1, "1.2.3.1", DEPRECATED), (ENTRY_2, "1.2.3.2", APPROVED),
                                          ("urn:uuid:33333333-3333-4333-8333-333333333333", "9.9", APPROVED))
    with make_client(test_pki, server.server_port) as client:
        found = client.get_documents(unique_ids=["1.2.3.1", "1.2.3.2"], patient_ins_cx=INS_CX, vihf=vihf)
    assert found == [iti18.RegistryEntry(ENTRY_1, "1.2.3.1", DEPRECATED, INS_CX),
                     iti18.RegistryEntry(ENTRY_2, "1.2.3.2", APPROVED, INS_CX)]  # what was not asked for is ignored
    assert [e.availability for e in found] == ["Deprecated", "Approved"]
    query = soap.body_child(soap.parse_xml(server.behaviour.requests[0][2]))
    assert query.find("rim:AdhocQuery", soap.NS).get("id") == iti18.GET_DOCUMENTS
    (slot,) = query.findall("rim:AdhocQuery/rim:Slot", soap.NS)
    assert slot.get("name") == "$XDSDocumentEntryUniqueId"
    assert slot.findtext("rim:ValueList/rim:Value", namespaces=soap.NS) == "('1.2.3.1','1.2.3.2')"
    assert query.find("query:ResponseOption", soap.NS).get("returnType") == "LeafClass"


def _shape(element: etree._Element) -> list:
    """Tags and attribute names of a tree, in document order (values left out: ids, dates, patients differ)."""
    return [(e.tag, sorted(e.attrib)) for e in element.iter(etree.Element)]


def test_get_documents_is_shaped_as_the_gie_td31_stored_query(server, test_pki, vihf):  # noqa: F811
    """Golden test of our ITI-18 request against the DMP operator's own stored query (TD3.1, a FindDocuments):
    the same WS-Addressing headers with the same Action, the same ResponseOption, and an AdhocQuery built the
    same way (Slot / ValueList / Value, quoted values); both valid against the ebRS query schema."""
    server.behaviour.body = entries_reply()
    with make_client(test_pki, server.server_port) as client:
        client.get_documents(unique_ids=["1.2.3.1", "1.2.3.2"], patient_ins_cx=INS_CX, vihf=vihf)
    ours = soap.parse_xml(server.behaviour.requests[0][2])
    gie = soap.parse_xml(TD31_REQUEST.read_bytes())

    def headers(env):
        return sorted(etree.QName(h).localname for h in env.find("soap:Header", soap.NS))
    assert headers(ours) == headers(gie) == ["Action", "MessageID", "ReplyTo", "Security", "To"]
    for name in ("Action", "To"):
        assert len(ours.findall(f"soap:Header/wsa:{name}", soap.NS)) == 1
    security = "soap:Header/wsse:Security"
    assert dict(ours.find(security, soap.NS).attrib) == dict(gie.find(security, soap.NS).attrib) == {}
    assert soap.header_value(ours, "Action") == soap.header_value(gie, "Action") == "urn:ihe:iti:2007:RegistryStoredQuery"
    address = "soap:Header/wsa:ReplyTo/wsa:Address"
    assert ours.findtext(address, namespaces=soap.NS) == gie.findtext(address, namespaces=soap.NS) == soap.ANONYMOUS

    query, gie_query = soap.body_child(ours), soap.body_child(gie)
    assert query.tag == gie_query.tag == f"{{{soap.QUERY}}}AdhocQueryRequest"
    option = "query:ResponseOption"
    assert dict(query.find(option, soap.NS).attrib) == dict(gie_query.find(option, soap.NS).attrib) == {
        "returnComposedObjects": "true", "returnType": "LeafClass"}
    # One AdhocQuery with an id, Slots of one ValueList each: the GIE's two slots, our one, same shape.
    slot_shape = [(f"{{{soap.RIM}}}Slot", ["name"]), (f"{{{soap.RIM}}}ValueList", []), (f"{{{soap.RIM}}}Value", [])]
    assert _shape(query)[:3] == _shape(gie_query)[:3]
    assert _shape(query)[3:] == slot_shape and _shape(gie_query)[3:] == slot_shape * 2
    # A list parameter is `('a','b')`, as the GIE's $XDSDocumentEntryStatus `('urn:…:Approved')`.
    gie_status = gie_query.find("rim:AdhocQuery/rim:Slot[@name='$XDSDocumentEntryStatus']/rim:ValueList/rim:Value",
                                soap.NS).text
    assert gie_status.startswith("('") and gie_status.endswith("')")
    assert query.findtext("rim:AdhocQuery/rim:Slot/rim:ValueList/rim:Value", namespaces=soap.NS) == "('1.2.3.1','1.2.3.2')"
    assert validate.xds_request_errors(gie_query) == [] and validate.xds_request_errors(query) == []


def test_get_documents_by_entry_uuid(server, test_pki, vihf):  # noqa: F811
    server.behaviour.body = entries_reply((ENTRY_2, "1.2.3.2", DELETED))
    with make_client(test_pki, server.server_port) as client:
        found = client.get_documents(entry_uuids=[ENTRY_2], patient_ins_cx=INS_CX, vihf=vihf)
    assert [(e.entry_uuid, e.availability) for e in found] == [(ENTRY_2, "Deleted")]
    slot = soap.body_child(soap.parse_xml(server.behaviour.requests[0][2])).find("rim:AdhocQuery/rim:Slot", soap.NS)
    assert slot.get("name") == "$XDSDocumentEntryEntryUUID"


@pytest.mark.parametrize("status, body, expected", [
    (200, entries_reply(), []),  # the registry holds none of them: an answer
    (500, soap.fault("Receiver", "registry down"), None),  # no answer: never a guess
    (200, b"<html>proxy</html>", None),
    (200, entries_reply((ENTRY_1, "1.2.3.1", APPROVED), patient="123^^^&1.2.250.1.213.1.4.10&ISO^NH"), None),
])
def test_get_documents_without_a_usable_answer_is_none(server, test_pki, vihf, status, body, expected):  # noqa: F811
    server.behaviour.status, server.behaviour.body = status, body
    with make_client(test_pki, server.server_port) as client:
        assert client.get_documents(unique_ids=["1.2.3.1"], patient_ins_cx=INS_CX, vihf=vihf) == expected


def test_get_documents_takes_one_kind_of_id():
    with pytest.raises(ValueError):
        iti18.get_documents(None, "https://x", 1, unique_ids=["1"], entry_uuids=[ENTRY_1], patient_ins_cx=None, vihf=None)
    with pytest.raises(ValueError):
        iti18.get_documents(None, "https://x", 1, patient_ins_cx=None, vihf=None)


def test_the_gie_query_reply_is_read_entry_by_entry():
    """TD3.1 (the GIE's FindDocuments reply, 21 entries, rim elements under another prefix) reads whole."""
    body = soap.body_child(etree.parse(str(TD31_REPLY)).getroot())
    entries = iti18.document_entries(body)
    assert len(entries) == 21 and {e.availability for e in entries} == {"Approved"}
    assert entries[0].entry_uuid == "urn:uuid:7953af1a-ba1c-11eb-816f-0050569e422e"
    assert all(e.unique_id and e.patient_id and e.entry_uuid.startswith("urn:uuid:") for e in entries)
