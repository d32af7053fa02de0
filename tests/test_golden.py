"""Golden structure: our ITI-41 request carries, on the SubmissionSet, the clinical DocumentEntry and the
signature DocumentEntry, every slot, classification, author sub-slot, external identifier and association
that the GIE's TD2.1 example carries on the same object (extras allowed). `test_export` applies the same
comparison to `export --all` over the samples."""

from __future__ import annotations

import datetime as dt

from connector import prepare
from connector.payload import cda, ids, xds
from conftest import make_document, make_patient, make_settings
from gie_td21 import missing_structure, shapes, td21_request

PDF = b"%PDF-1.4\n% fictitious test content\n%%EOF\n"


def our_request(tmp_path, sign_credential, documents):
    """The request a run sends for `documents`, made by the product's builders (CDA, signature, metadata)."""
    settings = make_settings(tmp_path)
    structure, site = settings.structure, settings.structure.sites[0]
    patient = make_patient()
    built = []
    for d in documents:
        uid = ids.document_unique_id(structure.oid_root, d.document_id, d.version)
        built.append((d, uid, cda.build_cda(d, patient, site, structure, PDF, unique_id=uid)))
    keys = [(d.document_id, d.version) for d in documents]
    return prepare.submission(
        settings, sign_credential, site=site, patient=patient, documents=built,
        submission_set_uid=ids.submission_set_unique_id(structure.oid_root, keys),
        submission_set_entry_uuid=ids.submission_set_entry_uuid(structure.oid_root, keys),
        submission_time=dt.datetime(2026, 11, 21, 2, 5, 7, tzinfo=dt.timezone.utc),
    ).request


def test_td21_is_read_whole():
    """The comparison cannot pass by reading nothing: TD2.1's three objects and what they carry."""
    td21 = shapes(td21_request())
    assert set(td21) == {"SubmissionSet", "DocumentEntry", "SignatureEntry"}
    assert len(td21["DocumentEntry"].slots) == 7 and len(td21["DocumentEntry"].classifications) == 7
    assert len(td21["SignatureEntry"].classifications) == 8  # eventCodeList too
    assert td21["SignatureEntry"].author_slots == {"authorPerson", "authorSpecialty", "authorInstitution"}
    assert {"legalAuthenticator", "sourcePatientId"} <= td21["SignatureEntry"].slots
    assert len(td21["SubmissionSet"].external_ids) == 3 and len(td21["SubmissionSet"].associations) == 2
    assert td21["SignatureEntry"].associations == {(xds.SIGNS, "to SubmissionSet")}


def test_our_request_carries_everything_td21_carries(tmp_path, sign_credential):
    documents = [make_document(document_id="G1"), make_document(document_id="G2", legal_authenticator_rpps=None, title=None)]
    assert missing_structure(our_request(tmp_path, sign_credential, documents)) == {}


def test_only_a_stay_not_ended_lacks_a_slot(tmp_path, sign_credential):
    """serviceStopTime is optional (IHE: R2): a document whose act or stay has no end in the store has none,
    nor has its CDA an effectiveTime/high. Nothing else depends on the data."""
    documents = [make_document(document_id="G1", service_stop=None, author_given_name=None)]
    assert missing_structure(our_request(tmp_path, sign_credential, documents)) == {
        "DocumentEntry": {"slots": {"serviceStopTime"}}
    }


def test_a_missing_piece_is_found(tmp_path, sign_credential):
    """The comparison sees what it is meant to see: drop one slot, one author sub-slot, one association slot."""
    request = our_request(tmp_path, sign_credential, [make_document()])
    rim = f"{{{xds.RIM}}}"
    for slot in list(request.iter(f"{rim}Slot")):
        if slot.get("name") in ("legalAuthenticator", "authorSpecialty", "SubmissionSetStatus"):
            slot.getparent().remove(slot)
    missing = missing_structure(request)
    assert missing["DocumentEntry"] == {"slots": {"legalAuthenticator"}, "author_slots": {"authorSpecialty"}}
    assert missing["SignatureEntry"]["slots"] == {"legalAuthenticator"}
    assert missing["SubmissionSet"]["association_slots"] == {
        (xds.HAS_MEMBER, "to DocumentEntry", "SubmissionSetStatus"),
        (xds.HAS_MEMBER, "to SignatureEntry", "SubmissionSetStatus"),
    }
