"""The sandbox refuses coded metadata the DMP's tables contradict: a classCode other than ASS_X16's for the
typeCode (or outside JDV_J57), a contentTypeCode outside JDV_J59. Requests built by the connector, then altered."""

from __future__ import annotations

from conftest import make_document
from connector.sandbox import checks
from test_sandbox import (  # noqa: F401 (fixtures)
    build_request, credentials, post, registry_response, sandbox, session, settings,
)


def _post_altered(session, sandbox, built, old: bytes, new: bytes):
    assert built.body.count(old) == 1, old
    altered = built.body.replace(old, new)
    return session.post(sandbox.url + "/repository", data=altered, headers={"Content-Type": built.content_type},
                        timeout=30)


def _refusals(resp) -> list[tuple[str, str, str]]:
    status, errors = registry_response(resp)
    assert status == "Failure"
    return errors


def test_our_coded_metadata_is_accepted(sandbox, session, settings, credentials):
    documents = [make_document(type_code="18748-4", activity="O"), make_document(document_id="D2", type_code="34133-9", activity="O")]
    built = build_request(settings, credentials, sandbox.url, documents=documents)
    status, errors = registry_response(post(session, sandbox.url, built))
    assert (status, errors) == ("Success", [])


def test_a_class_code_contradicting_ass_x16_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, documents=[make_document(type_code="18748-4")])
    # 18748-4 (CR d'imagerie) is 31 in ASS_X16; 10 (Compte rendu) is in J57 but contradicts the map
    resp = _post_altered(session, sandbox, built, b'nodeRepresentation="31"', b'nodeRepresentation="10"')
    assert ("XDSRegistryMetadataError", "classCode 10 contredit ASS_X16 pour le typeCode 18748-4 (attendu 31)",
            built.doc_uids[0]) in _refusals(resp)


def test_a_class_code_outside_j57_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, documents=[make_document(type_code="18748-4")])
    resp = _post_altered(session, sandbox, built, b'nodeRepresentation="31"', b'nodeRepresentation="99"')
    assert ("XDSRegistryMetadataError", "classCode 99 (1.2.250.1.213.1.1.4.1) hors JDV_J57",
            built.doc_uids[0]) in _refusals(resp)


def test_a_content_type_code_outside_j59_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, documents=[make_document(activity="I")])
    resp = _post_altered(session, sandbox, built, b'nodeRepresentation="03"', b'nodeRepresentation="02"')
    assert ("XDSRegistryMetadataError", "contentTypeCode 02 (1.2.250.1.213.2.2) hors JDV_J59",
            built.ss_uid) in _refusals(resp)


def test_a_j59_code_under_another_code_system_is_refused(sandbox, session, settings, credentials):
    built = build_request(settings, credentials, sandbox.url, documents=[make_document(activity="I")])
    # 03 is a TRE_R209 code: under TRE_R02 (the facility types) it means nothing
    resp = _post_altered(session, sandbox, built, b"<rim:Value>1.2.250.1.213.2.2</rim:Value>",
                         b"<rim:Value>1.2.250.1.71.4.2.4</rim:Value>")
    assert ("XDSRegistryMetadataError", "contentTypeCode 03 (1.2.250.1.71.4.2.4) hors JDV_J59",
            built.ss_uid) in _refusals(resp)


def test_the_checks_are_listed_in_the_module_docstring():
    assert "ASS_X16" in checks.__doc__ and "JDV_J59" in checks.__doc__
