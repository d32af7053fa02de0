"""Replacement of a version already in the DMP (ITI-41 with RPLC): the CDA's setId / versionNumber /
relatedDocument, the RPLC association, and the checks of both (ANS XSD and schematron, our metadata check)."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from lxml import etree

from connector import prepare
from connector.payload import cda, ids, validate, xds, xds_read
from connector.payload.errors import PayloadError
from connector.payload.lifecycle import RPLC, Replaces
from conftest import make_document, make_patient, make_settings

NS = {"v3": "urn:hl7-org:v3", "rim": xds.RIM}
PDF = b"%PDF-1.4\n% fictitious test content\n%%EOF\n"
REGISTRY_ENTRY = "urn:uuid:7953af1a-ba1c-11eb-816f-0050569e422e"  # as a registry would give it (TD3.1), not ours
WHEN = dt.datetime(2026, 11, 22, 8, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


def versions(settings, v1=1, v2=2):
    root = settings.structure.oid_root
    old, new = make_document(version=v1), make_document(version=v2, title="Lettre de sortie (corrigée)")
    replaces = Replaces(REGISTRY_ENTRY, ids.document_unique_id(root, "DOC0001", v1), v1)
    return old, new, replaces


def build(settings, document, replaces=None):
    structure = settings.structure
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    return uid, cda.build_cda(document, make_patient(), structure.sites[0], structure, PDF, unique_id=uid,
                              replaces=replaces)


def header(xml: bytes, path: str) -> list[str]:
    return etree.fromstring(xml).xpath(path, namespaces=NS)


# --- the CDA ------------------------------------------------------------------------------------------


def test_the_new_version_keeps_the_set_id_and_names_the_replaced_one(settings):
    old, new, replaces = versions(settings)
    old_uid, old_xml = build(settings, old)
    new_uid, new_xml = build(settings, new, replaces)
    assert new_uid != old_uid
    assert header(new_xml, "v3:setId/@root") == header(old_xml, "v3:setId/@root")  # one document, two versions
    assert header(old_xml, "v3:versionNumber/@value") == ["1"] and header(new_xml, "v3:versionNumber/@value") == ["2"]
    assert header(new_xml, "v3:relatedDocument/@typeCode") == ["RPLC"]
    assert header(new_xml, "v3:relatedDocument/v3:parentDocument/v3:id/@root") == [old_uid] == header(old_xml, "v3:id/@root")
    assert header(new_xml, "v3:relatedDocument/v3:parentDocument/v3:versionNumber/@value") == ["1"]
    assert header(old_xml, "v3:relatedDocument") == []
    # CDA R2 order: relatedDocument between documentationOf and componentOf
    names = [etree.QName(e).localname for e in etree.fromstring(new_xml)]
    assert names.index("documentationOf") < names.index("relatedDocument") < names.index("componentOf")


def test_the_replacement_cda_passes_the_ans_xsd_and_schematron(settings):
    _, new, replaces = versions(settings)
    _, xml = build(settings, new, replaces)
    assert validate.cda_errors(xml) == []
    tree = validate.parse_untrusted(xml)
    assert validate._schematron_for(tree) is validate._generated  # the fast stylesheet keeps the RPLC rules


def test_the_schematron_refuses_a_broken_related_document(settings):
    """The relatedDocument rules do run on our CDAs: a parentDocument without id is an error."""
    _, new, replaces = versions(settings)
    _, xml = build(settings, new, replaces)
    broken = bytes(xml).replace(f'<id root="{replaces.unique_id}"></id>'.encode(), b"")
    assert broken != bytes(xml)
    assert any("parentDocument" in e or "CI-SISRelatedDocument" in e for e in validate.cda_errors(broken))


@pytest.mark.parametrize("v1, v2", [(2, 2), (3, 2)])
def test_a_version_that_does_not_follow_the_replaced_one_is_refused(settings, v1, v2):
    _, new, replaces = versions(settings, v1, v2)
    with pytest.raises(PayloadError, match=f"DOC0001.*version {v2} does not follow the replaced version {v1}"):
        build(settings, new, replaces)


def test_a_version_cannot_replace_itself(settings):
    _, new, _ = versions(settings)
    uid = ids.document_unique_id(settings.structure.oid_root, "DOC0001", 2)
    with pytest.raises(PayloadError, match="cannot replace itself"):
        build(settings, new, Replaces(REGISTRY_ENTRY, uid))


def test_a_passthrough_cda_must_itself_say_what_it_replaces(settings):
    _, new, replaces = versions(settings)
    site, patient = settings.structure.sites[0], make_patient()
    uid, built = build(settings, new, replaces)
    assert cda.check_passthrough_cda(bytes(built), new, patient, site, uid, replaces) == bytes(built)
    _, plain = build(settings, new)
    with pytest.raises(PayloadError, match="relatedDocument typeCode=RPLC"):
        cda.check_passthrough_cda(bytes(plain), new, patient, site, uid, replaces)
    with pytest.raises(PayloadError, match="versionNumber must be above"):
        cda.check_passthrough_cda(bytes(built), new, patient, site, uid, Replaces(REGISTRY_ENTRY, replaces.unique_id, 5))


# --- the ITI-41 request ----------------------------------------------------------------------------------


def request_of(settings, sign_credential, replaces_by_uid=None, documents=None):
    structure = settings.structure
    site, patient = structure.sites[0], make_patient()
    _, new, replaces = versions(settings)
    documents = documents or [new]
    built = []
    for d in documents:
        r = (replaces_by_uid or {}).get(ids.document_unique_id(structure.oid_root, d.document_id, d.version))
        uid, xml = build(settings, d, r)
        built.append((d, uid, xml))
    keys = [(d.document_id, d.version) for d in documents]
    return prepare.submission(
        settings, sign_credential, site=site, patient=patient, documents=built,
        submission_set_uid=ids.submission_set_unique_id(structure.oid_root, keys),
        submission_set_entry_uuid=ids.submission_set_entry_uuid(structure.oid_root, keys),
        submission_time=WHEN, replaces=replaces_by_uid,
    )


def test_the_request_carries_an_rplc_association_to_the_registrys_entry(settings, sign_credential):
    _, new, replaces = versions(settings)
    new_uid = ids.document_unique_id(settings.structure.oid_root, "DOC0001", 2)
    prepared = request_of(settings, sign_credential, {new_uid: replaces})  # validated by prepare: schema, metadata
    new_entry = ids.entry_uuid(settings.structure.oid_root, "DOC0001", 2)
    (rplc,) = prepared.request.xpath("//rim:Association[@associationType=$t]", namespaces=NS, t=RPLC)
    assert (rplc.get("sourceObject"), rplc.get("targetObject")) == (new_entry, REGISTRY_ENTRY)
    assert validate.xds_request_errors(prepared.request) == []
    assert xds_read.metadata_errors(prepared.request, prepared.attachments, require_signature=True) == []
    (entry,) = xds_read.parse_request(prepared.request).entries
    assert (entry.entry_uuid, entry.unique_id, entry.replaces) == (new_entry, new_uid, REGISTRY_ENTRY)
    assert xds_read.replacements(prepared.request) == {new_entry: REGISTRY_ENTRY}


def test_a_first_version_carries_no_rplc(settings, sign_credential):
    prepared = request_of(settings, sign_credential)
    assert prepared.request.xpath("//rim:Association[@associationType=$t]", namespaces=NS, t=RPLC) == []
    assert xds_read.parse_request(prepared.request).entries[0].replaces is None


def test_a_replacement_of_a_document_not_in_the_set_is_a_defect(settings, sign_credential):
    _, _, replaces = versions(settings)
    with pytest.raises(ValueError, match="replacements of documents it does not hold"):
        request_of(settings, sign_credential, {"1.2.3.4": replaces})


@pytest.mark.parametrize("target", ["1.2.250.1.999.42.1.5", "entry-1"])
def test_the_replaced_entry_must_be_an_entry_uuid_outside_the_set(settings, sign_credential, target):
    _, new, replaces = versions(settings)
    root = settings.structure.oid_root
    new_uid = ids.document_unique_id(root, "DOC0001", 2)
    with pytest.raises(PayloadError, match="DOC0001.*urn:uuid"):
        request_of(settings, sign_credential, {new_uid: Replaces(target, replaces.unique_id, 1)})
    itself = ids.entry_uuid(root, "DOC0001", 2)  # the new entry's own entryUUID
    with pytest.raises(PayloadError, match="the entry it replaces must be a urn:uuid entryUUID outside"):
        request_of(settings, sign_credential, {new_uid: Replaces(itself, replaces.unique_id, 1)})


def _rplc_request(settings, sign_credential):
    _, _, replaces = versions(settings)
    new_uid = ids.document_unique_id(settings.structure.oid_root, "DOC0001", 2)
    return request_of(settings, sign_credential, {new_uid: replaces})


@pytest.mark.parametrize("change, expected", [
    (lambda a, p: a.set("targetObject", "not-a-uuid"), "targetObject is not a urn:uuid entryUUID"),
    (lambda a, p: a.set("targetObject", a.get("sourceObject")), "targetObject is an object of the same request"),
    (lambda a, p: a.set("sourceObject", "urn:uuid:00000000-0000-4000-8000-000000000001"),
     "sourceObject is not a DocumentEntry"),
    (lambda a, p: a.addnext(copy.deepcopy(a)), "replaces more than one entry"),
])
def test_the_metadata_check_finds_a_wrong_rplc(settings, sign_credential, change, expected):
    prepared = _rplc_request(settings, sign_credential)
    request = copy.deepcopy(prepared.request)
    (rplc,) = request.xpath("//rim:Association[@associationType=$t]", namespaces=NS, t=RPLC)
    change(rplc, request)
    errors = xds_read.metadata_errors(request, prepared.attachments)
    assert any(expected in e for e in errors), errors
