"""Golden structure: our ITI-41 request carries, on the SubmissionSet, the clinical DocumentEntry and the
signature DocumentEntry, every slot, classification, author sub-slot, external identifier and association
that the GIE's TD2.1 example carries on the same object (extras allowed). `test_export` applies the same
comparison to `export --all` over the samples."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from lxml import etree

from connector import prepare
from connector.dmp import mtom, soap
from connector.payload import cda, ids, xds, xds_read
from connector.sandbox import checks
from conftest import make_document, make_patient, make_settings
from gie_td21 import missing_structure, shapes, td21, td21_request

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"

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


# --- TD2.1 through our checks: what the sandbox (the DMP as we model it) and our self-check say -----------

# Our self-check of our OWN output refuses TD2.1 on these points, on purpose (payload.xds_read's table):
OWN_OUTPUT_ONLY = {
    "SubmissionSet: authorInstitution carries no FINESS (IDNST)":
        "we are a hospital site: our structure id is 1 + FINESS géographique, the same in the VIHF and the CDA; "
        "TD2.1 is a private practice (4 + RPPS + rank), which the DMP accepts",
    "DocumentEntry DocumentME2: hash missing": "we send hash and size so the DMP checks our bytes end to end; "
                                               "optional for a document source (the repository computes them)",
    "DocumentEntry DocumentME2: size missing": "idem",
    "DocumentEntry DocumentME2: authorInstitution carries no FINESS (IDNST)": "as the SubmissionSet's",
    "DocumentEntry DocumentME2: no attached document":
        "our ids match exactly; TD2.1 attaches it as xdsb:Document documentME2 (another case), which the "
        "GIE publishes as a working request: the sandbox matches ids ignoring case when exactly one fits",
    "DocumentEntry Signature01: hash missing": "as DocumentME2's",
    "DocumentEntry Signature01: size missing": "as DocumentME2's",
    "DocumentEntry Signature01: authorInstitution carries no FINESS (IDNST)": "as the SubmissionSet's",
    "xdsb:Document documentME2: no DocumentEntry with this id": "the other side of the case difference",
}

# What the sandbox still refuses in TD2.1, and why: none is a metadata check.
REMAINING = {
    "soap.version": "TD2.1's envelope is SOAP 1.1 (schemas.xmlsoap.org) inside a part typed application/soap+xml; "
                    "ITI-41 is SOAP 1.2 (IHE ITI TF-2x V.3.1): a VersionMismatch fault, before any check",
    "wsa.to": "TD2.1's wsa:To is empty (a soapUI capture); IHE ITI TF-2x V.3.2 wants the endpoint there. "
              "Unknown whether the DMP checks it; we always send it",
    "vihf.signature": "TD2.1's VIHF is a DIRECTE one (the professional authenticated by a CPS card), not signed; "
                      "we are an INDIRECTE client (a structure certificate signs the VIHF) and the sandbox "
                      "models that mode only",
    "signature.invalid": "TD2.1's XAdES is signed by the IGC-Santé TEST chain, not the sandbox's trust anchor, and "
                         "its manifest references a CDA uniqueId that is not the DocumentEntry's "
                         "(the example's parts come from different captures)",
}


def _td21_soap12():
    """TD2.1 with only its envelope's namespace changed to SOAP 1.2, and its documents by xdsb:Document id."""
    envelope, parts = td21()
    envelope = etree.fromstring(etree.tostring(envelope).replace(SOAP11.encode(), soap.SOAP12.encode()))
    return envelope, mtom.resolve_documents(envelope, parts)


def test_td21_passes_the_dmps_metadata_checks_and_fails_only_our_own_strictness():
    envelope, documents = _td21_soap12()
    request = envelope.find(f".//{{{xds.XDSB}}}ProvideAndRegisterDocumentSetRequest")
    assert xds_read.metadata_errors(request, documents, require_signature=True, as_received=True) == []
    assert xds_read.metadata_errors(request, documents, require_signature=True) == list(OWN_OUTPUT_ONLY)


def test_td21_through_the_sandbox_checks_differs_only_where_listed(pki):
    settings = checks.CheckSettings(ca_cert_pem=pki.ca_cert.read_bytes(), fast=True)
    envelope, parts = td21()
    with pytest.raises(checks.SoapFault) as fault:
        checks.check_provide_and_register(envelope, mtom.resolve_documents(envelope, parts), settings)
    assert fault.value.code == "VersionMismatch"

    envelope, documents = _td21_soap12()
    submission, errors = checks.check_provide_and_register(envelope, documents, settings)
    assert {e.check for e in errors} == set(REMAINING) - {"soap.version"}, errors
    assert all(e.check == "signature.invalid" for e in errors if e.code == "XDSRepositoryMetadataError")
    # read whole: the document attached under another case, hash and size computed as a repository does
    (cda,) = [e for e in submission.entries if not e.is_signature]
    assert cda.content == documents["documentME2"] and cda.hash == hashlib.sha1(cda.content).hexdigest()
    assert cda.finess == "499900063480001"
    # the manifest's claim above: it signs a uniqueId TD2.1 has no DocumentEntry for
    (signature,) = [e for e in submission.entries if e.is_signature]
    signed = set(re.findall(rb'Reference URI="urn:oid:([0-9.]+)"', signature.content))
    assert cda.uid.encode() not in signed
