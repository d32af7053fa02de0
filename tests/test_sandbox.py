"""The sandbox DMP, in-process on a free port, driven over real mutual TLS with requests built by the
connector's own modules (XDS metadata, VIHF, MTOM)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import socket
import ssl
import uuid

import pytest
import requests
from lxml import etree

from connector.config import CertificateSettings
from connector.dmp import mtom, soap
from connector.dmp.tls import MutualTlsAdapter, client_context
from connector.payload import ids, xds
from connector.resources import ans_kit
from connector.sandbox import checks
from connector.sandbox import report as sandbox_report
from connector.sandbox.state import SandboxState
from connector.trust import pki as test_pki
from connector.trust.certs import load_credential
from connector.trust.dsig import sign_submission_set
from connector.trust.vihf import build_vihf
from conftest import make_document, make_patient, make_settings

CDA_EXAMPLE = ans_kit() / "ExemplesCDA/DOC_NON_STRUCTURE_CDA-R2-N1.xml"


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("settings"))


@pytest.fixture(scope="module")
def credentials(auth_credential, sign_credential):
    return auth_credential, sign_credential


@pytest.fixture(scope="module")
def session(pki, credentials):
    s = requests.Session()
    s.mount("https://", MutualTlsAdapter(client_context(pki.ca_cert, credentials[0])))
    return s


@pytest.fixture
def sandbox(start):
    return start()


# --- building requests ----------------------------------------------------------------------------


def cda_for(uid: str, set_id: str, version: int, extra: str = "") -> bytes:
    """The ANS level-1 example CDA, re-identified as document `uid`."""
    cda = CDA_EXAMPLE.read_bytes()
    cda = cda.replace(b'<id root="1.3.6.1.4.1.19376.1.2.20.12345.1.1"/>', f'<id root="{uid}"/>'.encode(), 1)
    cda = cda.replace(b'<setId root="1.3.6.1.4.1.19376.1.2.20.12345.1"/>', f'<setId root="{set_id}"/>'.encode(), 1)
    cda = cda.replace(b'<versionNumber value="1"/>', f'<versionNumber value="{version}"/>'.encode(), 1)
    return cda + extra.encode()


@dataclasses.dataclass
class Built:
    content_type: str
    body: bytes
    ss_uid: str
    doc_uids: list[str]
    patient_cx: str


def build_request(
    settings,
    credentials,
    url,
    *,
    documents=None,
    patient=None,
    ss_uid=None,
    vihf_finess=None,
    vihf_patient=None,
    cda_extra="",
    cda_mutate=lambda cda: cda,
    doc_uid=None,
    vihf_signer=None,
    signed_ss_uid=None,
    signature_mutate=lambda xml: xml,
    action=soap.ITI41_ACTION,
    mutate=lambda request, attachments: None,
):
    auth, sign = credentials
    patient = patient or make_patient()
    documents = documents or [make_document()]
    root = settings.structure.oid_root
    site = settings.structure.sites[0]
    entries = []
    for doc in documents:
        uid = doc_uid or ids.document_unique_id(root, doc.document_id, doc.version)
        cda = cda_mutate(cda_for(uid, ids.document_set_id(root, doc.document_id), doc.version, cda_extra))
        entries.append(xds.Entry(doc, patient, cda, uid, ids.entry_uuid(root, doc.document_id, doc.version)))
    keys = [(d.document_id, d.version) for d in documents]
    ss_entry_uuid = ids.submission_set_entry_uuid(root, keys) if ss_uid is None else f"urn:uuid:{uuid.uuid4()}"
    ss_uid = ss_uid or ids.submission_set_unique_id(root, keys)
    signature = xds.SignatureEntry(
        xml=signature_mutate(signature_xml(sign, signed_ss_uid or ss_uid, {e.unique_id: e.cda for e in entries})),
        unique_id=ids.signature_unique_id(root, ss_uid),
        entry_uuid=ids.signature_entry_uuid(root, ss_uid),
        signing_time=dt.datetime.now(dt.timezone.utc),
    )
    request, attachments = xds.build_provide_and_register(
        structure=settings.structure,
        site=site,
        patient=patient,
        entries=entries,
        submission=settings.submission,
        submission_set_uid=ss_uid,
        submission_set_entry_uuid=ss_entry_uuid,
        submission_time=dt.datetime.now(dt.timezone.utc),
        signature=signature,
    )
    mutate(request, attachments)
    patient_cx = xds.ins_cx(patient)
    vihf = build_vihf(
        vihf_signer or sign,
        settings.vihf,
        finess_geo=vihf_finess or site.finess_geo,
        facility_type=site.healthcare_facility_type,
        patient_ins_cx=vihf_patient or patient_cx,
        subject_rpps="10001234567",
        subject_specialty="G15_10/SM26",
    )
    env = soap.envelope(request, action=action, to=url + "/repository", security=[vihf])
    content_type, body = mtom.encode(env, attachments, action=soap.ITI41_ACTION)
    return Built(content_type, body, ss_uid, [e.unique_id for e in entries], patient_cx)


def signature_xml(sign, ss_uid: str, documents: dict[str, bytes]) -> bytes:
    return sign_submission_set(sign, submission_set_uid=ss_uid, documents=list(documents.items()),
                               signature_id=f"S{uuid.uuid4().hex}", signing_time=dt.datetime.now(dt.timezone.utc))


def post(session, url, built: Built, path="/repository"):
    return session.post(url + path, data=built.body, headers={"Content-Type": built.content_type}, timeout=120)  # the first full check compiles the schematron: slow on a loaded machine


def registry_response(resp) -> tuple[str, list[tuple[str, str, str]]]:
    """(status short form, [(errorCode, codeContext, location)]) of an ITI-41 reply."""
    env, _ = mtom.decode(resp.headers["Content-Type"], resp.content)
    assert soap.header_value(env, "Action") == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
    rr = soap.body_child(env)
    assert rr.tag == f"{{{soap.RS}}}RegistryResponse"
    errors = [(e.get("errorCode"), e.get("codeContext"), e.get("location")) for e in rr.iter(f"{{{soap.RS}}}RegistryError")]
    return rr.get("status").rsplit(":", 1)[-1], errors


def codes(resp) -> set[str]:
    return {code for code, _, _ in registry_response(resp)[1]}


# --- ITI-18 ---------------------------------------------------------------------------------------


def stored_query(session, url, settings, credentials, patient_cx, *, ss_uid=None, find_patient=None):
    site = settings.structure.sites[0]
    query_id = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d" if find_patient else "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
    request = etree.Element(f"{{{soap.QUERY}}}AdhocQueryRequest", nsmap={"query": soap.QUERY, "rim": soap.RIM})
    etree.SubElement(request, f"{{{soap.QUERY}}}ResponseOption", returnType="LeafClass", returnComposedObjects="true")
    query = etree.SubElement(request, f"{{{soap.RIM}}}AdhocQuery", id=query_id)
    name, value = ("$XDSDocumentEntryPatientId", find_patient) if find_patient else ("$XDSSubmissionSetUniqueId", ss_uid)
    slot = etree.SubElement(query, f"{{{soap.RIM}}}Slot", name=name)
    etree.SubElement(etree.SubElement(slot, f"{{{soap.RIM}}}ValueList"), f"{{{soap.RIM}}}Value").text = f"'{value}'"
    vihf = build_vihf(credentials[1], settings.vihf, finess_geo=site.finess_geo, facility_type=site.healthcare_facility_type,
                      patient_ins_cx=patient_cx, subject_rpps="10001234567", subject_specialty="G15_10/SM26")
    env = soap.envelope(request, action=soap.ITI18_ACTION, to=url + "/registry", security=[vihf])
    resp = session.post(url + "/registry", data=soap.to_bytes(env),
                        headers={"Content-Type": 'application/soap+xml; charset=UTF-8'}, timeout=30)
    assert resp.status_code == 200, resp.text
    return soap.body_child(soap.parse_xml(resp.content))


def unique_ids(response) -> set[str]:
    return {ei.get("value") for ei in response.iter(f"{{{soap.RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") in ("urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
                                                  "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab")}


# --- tests ----------------------------------------------------------------------------------------


def test_client_without_certificate_is_refused_at_the_handshake(sandbox, pki):
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # TLS 1.3 reports the missing certificate at the first read, TLS 1.2 in the handshake
                tls.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                assert tls.recv(100) == b"", "the server must not answer a client without certificate"


def test_client_certificate_from_another_ca_is_refused(sandbox, pki, tmp_path, settings, credentials):
    p12, password_file = test_pki.issue_bad_p12(pki, tmp_path / "other.p12", "auth_cli", other_ca=True)
    other = load_credential(CertificateSettings(p12, password_file))
    s = requests.Session()
    s.mount("https://", MutualTlsAdapter(client_context(pki.ca_cert, other)))
    built = build_request(settings, credentials, sandbox.url)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        post(s, sandbox.url, built)
    assert sandbox.state.query("SELECT count(*) AS n FROM submissions")[0]["n"] == 0


def test_non_mtom_request_gets_a_soap_sender_fault(sandbox, session):
    env = soap.envelope(etree.Element("x"), action=soap.ITI41_ACTION, to=sandbox.url + "/repository")
    resp = session.post(sandbox.url + "/repository", data=soap.to_bytes(env),
                        headers={"Content-Type": "application/soap+xml; charset=UTF-8"}, timeout=30)
    assert resp.status_code == 400
    fault = soap.body_child(soap.parse_xml(resp.content))
    assert fault.tag == f"{{{soap.SOAP12}}}Fault"
    assert fault.findtext(f"{{{soap.SOAP12}}}Code/{{{soap.SOAP12}}}Value") == "soap:Sender"
    assert "MTOM" in fault.findtext(f".//{{{soap.SOAP12}}}Text")


def test_valid_submission_is_stored_and_found_by_iti18(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    resp = post(session, sandbox.url, built)
    assert resp.status_code == 200
    status, errors = registry_response(resp)
    assert (status, errors) == ("Success", []), "\n".join(map(str, errors))
    stored = sandbox.state.submission(built.ss_uid)
    assert stored["patient"] == built.patient_cx
    assert {d["uid"] for d in stored["documents"] if not d["is_signature"]} == set(built.doc_uids)

    found = stored_query(session, sandbox.url, settings, credentials, built.patient_cx, ss_uid=built.ss_uid)
    assert found.get("status").endswith(":Success")
    assert {built.ss_uid, *built.doc_uids} <= unique_ids(found)
    assert not unique_ids(stored_query(session, sandbox.url, settings, credentials, built.patient_cx, ss_uid="1.2.3.4.404"))
    by_patient = stored_query(session, sandbox.url, settings, credentials, built.patient_cx, find_patient=built.patient_cx)
    assert set(built.doc_uids) <= unique_ids(by_patient)


def test_stored_documents_carry_the_cda_identity(sandbox, session, settings, credentials):
    doc = make_document(document_id="ID1", version=3)
    built = build_request(settings, credentials, sandbox.url, documents=[doc])
    assert registry_response(post(session, sandbox.url, built))[0] == "Success"
    set_id = ids.document_set_id(settings.structure.oid_root, "ID1")
    stored = [d for d in sandbox.state.submission(built.ss_uid)["documents"] if not d["is_signature"]]
    assert [(d["set_id"], d["version"]) for d in stored] == [(f"{set_id}^", "3")]


def test_cda_identity_is_read_from_the_header_only():
    big = "A" * 300_000  # a base64 body well past the parser's first chunks
    cda = cda_for("1.2.3.1", "1.2.3.9", 2).replace(b"</ClinicalDocument>", f"<!-- {big} --></ClinicalDocument>".encode())
    assert checks._cda_identity(cda) == ("1.2.3.9^", "2")
    late = (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><component><setId root="9.9"/></component>'
            + f"<!-- {big} -->".encode() + b'<setId root="1.1" extension="x"/></ClinicalDocument>')
    assert checks._cda_identity(late) == ("1.1^x", None)  # a direct child, found even after the body
    assert checks._cda_identity(b"%PDF-1.4 not xml") == (None, None)
    assert checks._cda_identity(b'<ClinicalDocument xmlns="urn:hl7-org:v3"><setId root="1"/>') == (None, None)


def test_state_connection_is_shared_by_threads_and_reopens_after_close(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    state = SandboxState(tmp_path / "s.sqlite3")
    cxs = [f"{n:013d}^^^&1.2.250.1.213.1.4.10&ISO^NH" for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(state.set_patient, cxs))
    state.close()
    assert state.query("SELECT count(*) AS n FROM patients")[0]["n"] == 40  # reopened on use
    assert SandboxState(tmp_path / "s.sqlite3").patient_status(cxs[0]) == "active"  # committed for others too
    state.close()


def test_validators_are_loaded_when_the_sandbox_starts(sandbox):
    assert checks.SKIPPED == set()


def test_connector_iti18_client_finds_what_the_sandbox_stored(sandbox, session, settings, credentials):
    from connector.dmp import iti18

    built = build_request(settings, credentials, sandbox.url)
    assert registry_response(post(session, sandbox.url, built))[0] == "Success"
    site = settings.structure.sites[0]
    vihf = build_vihf(credentials[1], settings.vihf, finess_geo=site.finess_geo, facility_type=site.healthcare_facility_type,
                      patient_ins_cx=built.patient_cx, subject_rpps="10001234567",
                      subject_specialty="G15_10/SM26")
    registry = sandbox.url + "/registry"
    assert iti18.find_submission_set(session, registry, 30, built.ss_uid, built.patient_cx, vihf) is True
    assert iti18.find_submission_set(session, registry, 30, "1.2.3.4.404", built.patient_cx, vihf) is False


def test_replies_are_schema_valid(sandbox, session, settings, credentials):
    from connector.payload.validate import xds_request_errors

    built = build_request(settings, credentials, sandbox.url)
    for resp in (post(session, sandbox.url, built), post(session, sandbox.url, built)):  # Success, then Failure
        env, _ = mtom.decode(resp.headers["Content-Type"], resp.content)
        assert soap.header_value(env, "RelatesTo") and xds_request_errors(soap.body_child(env)) == []
    found = stored_query(session, sandbox.url, settings, credentials, built.patient_cx, ss_uid=built.ss_uid)
    assert len(found.findall(f".//{{{soap.RIM}}}ExtrinsicObject")) == 2  # the CDA and the signature
    assert xds_request_errors(found) == []
    refused = stored_query(session, sandbox.url, settings, credentials, built.patient_cx, find_patient="other^^^&1.2&ISO^NH")
    assert refused.get("status").endswith(":Failure") and xds_request_errors(refused) == []


def test_wrong_wsa_action_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, action="urn:ihe:iti:2007:RegistryStoredQuery")
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure" and any(c == "XDSRepositoryError" and "Action" in ctx for c, ctx, _ in errors)


def test_signature_of_another_submission_set_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, signed_ss_uid="1.2.250.1.999.42.6.6")
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert any(c == "XDSRepositoryMetadataError" and ctx.startswith("signature du lot") for c, ctx, _ in errors)


def test_schema_invalid_xades_is_refused(sandbox, session, settings, credentials):
    """QualifyingProperties without its required Target: outside what the signature signs, so the signature
    still verifies and only the XAdES schema check (the GIE's XAdES 1.1.1 XSD) can refuse it."""
    def without_target(xml: bytes) -> bytes:
        signature = etree.fromstring(xml)
        del signature.find(".//{http://uri.etsi.org/01903/v1.1.1#}QualifyingProperties").attrib["Target"]
        return etree.tostring(signature)

    built = build_request(settings, credentials, sandbox.url, signature_mutate=without_target)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure" and errors
    assert all(c == "XDSRepositoryMetadataError" and ctx.startswith("signature du lot: XAdES invalide")
               and "Target" in ctx for c, ctx, _ in errors), errors


def test_concurrent_resends_of_one_submission_set_store_it_once(sandbox, session, settings, credentials):
    from concurrent.futures import ThreadPoolExecutor

    built = build_request(settings, credentials, sandbox.url)
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: registry_response(post(session, sandbox.url, built))[0], range(6)))
    assert statuses == ["Failure"] * 5 + ["Success"]
    assert sandbox.state.query("SELECT count(*) AS n FROM documents WHERE uid = ?", (built.doc_uids[0],))[0]["n"] == 1


def test_iti18_reveals_nothing_of_another_patient(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    assert registry_response(post(session, sandbox.url, built))[0] == "Success"
    other = xds.ins_cx(make_patient(ins_matricule="180032B020401"))
    found = stored_query(session, sandbox.url, settings, credentials, other, ss_uid=built.ss_uid)
    assert unique_ids(found) == set()


def test_resending_a_submission_set_uid_is_refused_and_stores_nothing(sandbox, session, settings, credentials):
    first = build_request(settings, credentials, sandbox.url)
    assert registry_response(post(session, sandbox.url, first))[0] == "Success"
    again = build_request(settings, credentials, sandbox.url, documents=[make_document(document_id="DOC0002")],
                          ss_uid=first.ss_uid)
    status, errors = registry_response(post(session, sandbox.url, again))
    assert status == "Failure"
    assert ("XDSDuplicateUniqueIdInRegistry", first.ss_uid) in {(c, loc) for c, _, loc in errors}
    assert sandbox.state.query("SELECT count(*) AS n FROM documents WHERE uid = ?", (again.doc_uids[0],))[0]["n"] == 0


def test_same_document_uid_with_another_hash_is_refused(sandbox, session, settings, credentials):
    first = build_request(settings, credentials, sandbox.url)
    assert registry_response(post(session, sandbox.url, first))[0] == "Success"
    changed = build_request(settings, credentials, sandbox.url, ss_uid="1.2.250.1.999.42.9.1", cda_extra="<!-- v2 -->")
    assert codes(post(session, sandbox.url, changed)) == {"XDSNonIdenticalHash"}
    assert sandbox.state.submission("1.2.250.1.999.42.9.1") is None


def test_identical_document_in_a_new_submission_set_is_a_counted_duplicate(sandbox, session, settings, credentials, state_path):
    first = build_request(settings, credentials, sandbox.url)
    assert registry_response(post(session, sandbox.url, first))[0] == "Success"
    again = build_request(settings, credentials, sandbox.url, ss_uid="1.2.250.1.999.42.9.2")
    assert registry_response(post(session, sandbox.url, again))[0] == "Success"
    rep = sandbox_report.report(state_path)
    assert rep["duplicate_deliveries"] == 1
    assert rep["duplicates"][0]["uid"] == first.doc_uids[0]


def test_vihf_signed_by_a_foreign_ca_is_refused(sandbox, session, settings, credentials, pki, tmp_path):
    p12, password_file = test_pki.issue_bad_p12(pki, tmp_path / "rogue.p12", "sign", other_ca=True)
    rogue = load_credential(CertificateSettings(p12, password_file))
    built = build_request(settings, credentials, sandbox.url, vihf_signer=rogue)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert any(code == "XDSRepositoryError" and ctx.startswith("VIHF: signature") for code, ctx, _ in errors)
    assert sandbox.state.submission(built.ss_uid) is None


def test_tampered_vihf_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    tampered = built.body.replace(b">INDIRECTE<", b">DIRECTE<", 1)
    assert tampered != built.body
    resp = session.post(sandbox.url + "/repository", data=tampered, headers={"Content-Type": built.content_type}, timeout=30)
    status, errors = registry_response(resp)
    assert status == "Failure" and any("VIHF: signature" in ctx for _, ctx, _ in errors)


def test_a_repeated_ws_addressing_header_is_refused(sandbox, session, settings, credentials):
    """WS-Addressing 1.0 SOAP binding: each addressing property once (zeep, left alone, added a second set)."""
    built = build_request(settings, credentials, sandbox.url)
    start = built.body.index(b"<wsa:MessageID")
    element = built.body[start:built.body.index(b"</wsa:MessageID>", start) + len(b"</wsa:MessageID>")]
    doubled = built.body.replace(element, element + element, 1)
    resp = session.post(sandbox.url + "/repository", data=doubled, headers={"Content-Type": built.content_type}, timeout=30)
    status, errors = registry_response(resp)
    assert status == "Failure" and any("MessageID repeated" in ctx for _, ctx, _ in errors), errors
    assert sandbox.state.submission(built.ss_uid) is None


def test_finess_of_vihf_and_submission_set_must_match(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, vihf_finess="0B0999997")
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert {"XDSRegistryMetadataError"} == {c for c, ctx, _ in errors if "Identifiant_Structure" in ctx}
    assert sandbox.state.submission(built.ss_uid) is None


def test_vihf_patient_must_be_the_submission_set_patient(sandbox, session, settings, credentials):
    other = xds.ins_cx(make_patient(ins_matricule="180032B020401"))
    built = build_request(settings, credentials, sandbox.url, vihf_patient=other)
    assert "XDSPatientIdDoesNotMatch" in codes(post(session, sandbox.url, built))


def test_hash_mismatch_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    # one byte of the CDA attachment changes in transit (same size): the metadata hash no longer matches
    body = built.body.replace(b"<title>", b"<titlE>", 1)
    resp = session.post(sandbox.url + "/repository", data=body, headers={"Content-Type": built.content_type}, timeout=30)
    assert ("XDSRepositoryMetadataError", built.doc_uids[0]) in {(c, loc) for c, _, loc in registry_response(resp)[1]}


def test_closed_dmp_is_refused_as_unknown_patient(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    sandbox.state.set_patient(built.patient_cx, "closed")
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert ("XDSUnknownPatientId", "DMP fermé") in {(c, ctx) for c, ctx, _ in errors}


def test_unknown_non_test_patient_is_refused(sandbox, session, settings, credentials):
    patient = make_patient(ins_oid="1.2.250.1.213.1.4.8")
    built = build_request(settings, credentials, sandbox.url, patient=patient)
    assert "XDSUnknownPatientId" in codes(post(session, sandbox.url, built))
    assert sandbox.state.patient_status(built.patient_cx) is None


def test_state_survives_a_restart(start, session, settings, credentials, state_path):
    server = start()
    built = build_request(settings, credentials, server.url)
    assert registry_response(post(session, server.url, built))[0] == "Success"
    server.stop()
    again = start(state_path=state_path)
    assert again.state.submission(built.ss_uid) is not None
    assert codes(post(session, again.url, built)) == {"XDSDuplicateUniqueIdInRegistry"}


def test_fail_rate_one_refuses_everything_before_storing(start, session, settings, credentials):
    server = start(fail_rate=1.0, seed=7)
    seen = set()
    for n in range(8):
        built = build_request(settings, credentials, server.url, ss_uid=f"1.2.250.1.999.42.8.{n}")
        resp = post(session, server.url, built)
        if resp.status_code == 503:
            assert resp.headers["Content-Type"].startswith("text/html")
            seen.add("503")
        else:
            assert codes(resp) == {"XDSRegistryBusy"}
            seen.add("busy")
    assert seen == {"503", "busy"}
    assert server.state.query("SELECT count(*) AS n FROM submissions")[0]["n"] == 0
    assert sum(sandbox_report.report(server.state.path)["injected_faults"].values()) == 8


def test_drop_after_commit_stores_but_never_answers(start, session, settings, credentials):
    server = start(drop_after_commit_rate=1.0)
    built = build_request(settings, credentials, server.url)
    with pytest.raises(requests.exceptions.ConnectionError):
        post(session, server.url, built)
    stored = server.state.submission(built.ss_uid)
    assert stored is not None and stored["reply_dropped"] == 1
    found = stored_query(session, server.url, settings, credentials, built.patient_cx, ss_uid=built.ss_uid)
    assert built.ss_uid in unique_ids(found)


def test_latency_is_applied(start, session, settings, credentials):
    import time

    server = start(latency_ms=300)
    built = build_request(settings, credentials, server.url)
    t0 = time.monotonic()
    assert registry_response(post(session, server.url, built))[0] == "Success"
    assert time.monotonic() - t0 >= 0.3


def test_report_counts_are_exact(sandbox, session, settings, credentials, state_path):
    a = build_request(settings, credentials, sandbox.url, documents=[make_document(document_id="A1"), make_document(document_id="A2")])
    b = build_request(settings, credentials, sandbox.url, documents=[make_document(document_id="B1")],
                      patient=make_patient(ins_matricule="180032B020401"))
    for built in (a, b):
        assert registry_response(post(session, sandbox.url, built))[0] == "Success"
    assert codes(post(session, sandbox.url, a)) == {"XDSDuplicateUniqueIdInRegistry"}  # refused resend
    dup = build_request(settings, credentials, sandbox.url, documents=[make_document(document_id="B1")],
                        patient=make_patient(ins_matricule="180032B020401"), ss_uid="1.2.250.1.999.42.7.1")
    assert registry_response(post(session, sandbox.url, dup))[0] == "Success"  # identical: accepted, counted

    rep = sandbox_report.report(state_path)
    assert rep["submissions"] == 3
    assert rep["documents"] == 4  # A1, A2, B1, B1 again (signatures not counted)
    assert rep["distinct_documents"] == 3
    assert rep["duplicate_deliveries"] == 1
    assert rep["per_patient"] == {a.patient_cx: 2, b.patient_cx: 2}
    assert rep["rejections"] == {"XDSDuplicateUniqueIdInRegistry": 1}
    assert rep["rejected_requests"] == rep["rejected"] == 1
    text = sandbox_report.render_text(rep)
    assert "duplicate deliveries: 1" in text
    assert "180032B020401" not in text  # no INS in the text rendering


def test_full_cda_validation_accepts_the_ans_example(start, session, settings, credentials):
    server = start(fast=False)
    built = build_request(settings, credentials, server.url)
    assert registry_response(post(session, server.url, built)) == ("Success", [])


def test_invalid_cda_is_refused_unless_fast(start, session, settings, credentials):
    server = start(fast=False)
    def drop_title(cda: bytes) -> bytes:  # well-formed, hash and size right, but the CDA lacks its title
        start = cda.index(b"<title>")
        return cda[:start] + cda[cda.index(b"</title>", start) + len(b"</title>"):]

    built = build_request(settings, credentials, server.url, cda_mutate=drop_title)
    status, errors = registry_response(post(session, server.url, built))
    assert status == "Failure"
    assert {(c, loc) for c, ctx, loc in errors if ctx.startswith("CDA")} >= {("XDSRepositoryMetadataError", built.doc_uids[0])}
    fast = start(fast=True)
    assert registry_response(post(session, fast.url, built))[0] == "Success"


# --- refusals of the request's own consistency ------------------------------------------------------

R = f"{{{soap.RIM}}}"


def _entry(request, *, signature=False):
    for eo in request.iter(f"{R}ExtrinsicObject"):
        classes = {c.get("nodeRepresentation") for c in eo.iter(f"{R}Classification")}
        if (xds.SIGNATURE_CLASS.code in classes) == signature:
            return eo
    raise AssertionError("no such entry")


def _remove_entry(request, attachments, eo):
    """An ExtrinsicObject, its xdsb:Document, its attachment and its associations, gone."""
    eid = eo.get("id")
    eo.getparent().remove(eo)
    for a in list(request.iter(f"{R}Association")):
        if eid in (a.get("sourceObject"), a.get("targetObject")):
            a.getparent().remove(a)
    for doc in list(request.iter(f"{{{soap.XDSB}}}Document")):
        if doc.get("id") == eid:
            doc.getparent().remove(doc)
    del attachments[eid]


def test_entry_patient_id_other_than_the_submission_sets_is_refused(sandbox, session, settings, credentials):
    other = xds.ins_cx(make_patient(ins_matricule="180032B020401"))

    def other_patient(request, attachments):
        for ei in _entry(request).iter(f"{R}ExternalIdentifier"):
            if ei.get("identificationScheme") == xds.DE_PATIENT_ID:
                ei.set("value", other)

    built = build_request(settings, credentials, sandbox.url, mutate=other_patient)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert ("XDSPatientIdDoesNotMatch", built.doc_uids[0]) in {(c, loc) for c, _, loc in errors}
    assert sandbox.state.submission(built.ss_uid) is None


def test_entry_without_its_document_is_refused(sandbox, session, settings, credentials):
    def drop_document(request, attachments):
        eid = _entry(request).get("id")
        for doc in list(request.iter(f"{{{soap.XDSB}}}Document")):
            if doc.get("id") == eid:
                doc.getparent().remove(doc)
        del attachments[eid]

    built = build_request(settings, credentials, sandbox.url, mutate=drop_document)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure" and ("XDSMissingDocument", built.doc_uids[0]) in {(c, loc) for c, _, loc in errors}


def test_document_without_its_entry_is_refused(sandbox, session, settings, credentials):
    def drop_metadata(request, attachments):
        eo = _entry(request)
        eo.getparent().remove(eo)

    built = build_request(settings, credentials, sandbox.url, mutate=drop_metadata)
    status, errors = registry_response(post(session, sandbox.url, built))
    entry_uuid = ids.entry_uuid(settings.structure.oid_root, "DOC0001", 1)
    assert status == "Failure" and ("XDSMissingDocumentMetadata", entry_uuid) in {(c, loc) for c, _, loc in errors}


def test_include_of_a_missing_mime_part_is_a_sender_fault(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url)
    body = built.body.replace(b"Content-ID: <1.", b"Content-ID: <gone.", 1)  # the CDA's part, renamed away
    assert body != built.body
    resp = session.post(sandbox.url + "/repository", data=body, headers={"Content-Type": built.content_type}, timeout=30)
    assert resp.status_code == 400
    fault = soap.body_child(soap.parse_xml(resp.content))
    assert fault.findtext(f"{{{soap.SOAP12}}}Code/{{{soap.SOAP12}}}Value") == "soap:Sender"
    assert "no MIME part" in fault.findtext(f".//{{{soap.SOAP12}}}Text")
    assert sandbox.state.submission(built.ss_uid) is None


@pytest.mark.parametrize("signatures", [0, 2])
def test_a_submission_set_needs_exactly_one_signature(sandbox, session, settings, credentials, signatures):
    def signature_count(request, attachments):
        eo = _entry(request, signature=True)
        if signatures == 0:
            _remove_entry(request, attachments, eo)
            return
        twin = copy.deepcopy(eo)
        twin.set("id", eo.get("id") + "-2")
        for ei in twin.iter(f"{R}ExternalIdentifier"):
            if ei.get("identificationScheme") == xds.DE_UNIQUE_ID:
                ei.set("value", ei.get("value") + ".2")
        eo.addnext(twin)
        association = etree.SubElement(eo.getparent(), f"{R}Association", id="urn:uuid:" + str(uuid.uuid4()),
                                       associationType=xds.HAS_MEMBER, targetObject=twin.get("id"),
                                       sourceObject=next(request.iter(f"{R}RegistryPackage")).get("id"))
        slot = etree.SubElement(etree.SubElement(association, f"{R}Slot", name="SubmissionSetStatus"), f"{R}ValueList")
        etree.SubElement(slot, f"{R}Value").text = "Original"
        etree.SubElement(request, f"{{{soap.XDSB}}}Document", id=twin.get("id"))
        attachments[twin.get("id")] = attachments[eo.get("id")]

    built = build_request(settings, credentials, sandbox.url, mutate=signature_count)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert any(c == "XDSRepositoryMetadataError" and ctx.startswith(f"signature du lot: {signatures} document")
               for c, ctx, _ in errors), errors


@pytest.mark.parametrize("signature", [False, True])
def test_an_entry_without_legal_authenticator_is_refused(sandbox, session, settings, credentials, signature):
    def drop_legal_authenticator(request, attachments):
        eo = _entry(request, signature=signature)
        (slot,) = [s for s in eo.findall(f"{R}Slot") if s.get("name") == "legalAuthenticator"]
        eo.remove(slot)

    built = build_request(settings, credentials, sandbox.url, mutate=drop_legal_authenticator)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert status == "Failure"
    assert any(c == "XDSRegistryMetadataError" and "legalAuthenticator missing" in ctx for c, ctx, _ in errors), errors


def test_entries_without_hash_and_size_are_accepted_as_the_dmp_would(sandbox, session, settings, credentials):
    """Optional for a document source (IHE ITI TF-3 4.3.1; the GIE's TD2.1 sends none): the repository computes
    them. Our own output always carries them (payload.xds_read)."""
    def drop_hash_and_size(request, attachments):
        for eo in request.iter(f"{R}ExtrinsicObject"):
            for slot in [s for s in eo.findall(f"{R}Slot") if s.get("name") in ("hash", "size")]:
                eo.remove(slot)

    built = build_request(settings, credentials, sandbox.url, mutate=drop_hash_and_size)
    assert registry_response(post(session, sandbox.url, built)) == ("Success", [])
    stored = {d["uid"]: d for d in sandbox.state.submission(built.ss_uid)["documents"]}
    assert len(stored[built.doc_uids[0]]["hash"]) == 40 and stored[built.doc_uids[0]]["size"] > 0
