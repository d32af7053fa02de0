"""The corrections lifecycle at the protocol level, against the sandbox DMP over mutual TLS, with the connector's
own builders and client: replacement (ITI-41 + RPLC), withdrawal / archival (ITI-57), GetDocuments (ITI-18), and
every refusal of the sandbox's registry rules."""

from __future__ import annotations

import copy
import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from lxml import etree

from connector import prepare
from connector.dmp import outcome, soap
from connector.dmp.client import DmpClient
from connector.payload import ids, xds
from connector.payload.lifecycle import APPROVED, ARCHIVED, DELETED, DEPRECATED, Replaces
from connector.sandbox import checks
from connector.sandbox import report as sandbox_report
from connector.sandbox.state import SandboxState
from connector.trust import vihf as vihf_module
from conftest import make_document, make_patient, make_settings

PDF = b"%PDF-1.4\n% fictitious test content\n%%EOF\n"
WHEN = dt.datetime(2026, 11, 22, 8, 0, 0, tzinfo=dt.timezone.utc)
OTHER_PATIENT = dict(patient_id="IPP0002", ins_matricule="180017512345678")
MESSAGES = Path(__file__).resolve().parents[1] / "schemas/gie-dmp-package/messages"


class World:
    """One structure feeding one sandbox DMP through the connector's own payload builders and client."""

    def __init__(self, tmp_path, pki, auth_credential, sign_credential, sandbox):
        self.settings = make_settings(tmp_path, dmp={"base_url": sandbox.url, "ca_bundle": str(pki.ca_cert)})
        self.sign, self.sandbox = sign_credential, sandbox
        self.client = DmpClient(self.settings.dmp, auth_credential)
        self.site = self.settings.structure.sites[0]
        self.root = self.settings.structure.oid_root

    def uid(self, document) -> str:
        return ids.document_unique_id(self.root, document.document_id, document.version)

    def feed(self, document, patient=None, replaces: Replaces | None = None) -> outcome.Outcome:
        patient = patient or make_patient()
        uid, xml = prepare.document_cda(self.settings, document, patient, self.site, PDF, replaces=replaces)
        keys = [document.key]
        prepared = prepare.submission(
            self.settings, self.sign, site=self.site, patient=patient, documents=[(document, uid, xml)],
            submission_set_uid=ids.submission_set_unique_id(self.root, keys),
            submission_set_entry_uuid=ids.submission_set_entry_uuid(self.root, keys),
            submission_time=WHEN, replaces={uid: replaces} if replaces else None,
        )
        return self.client.provide_and_register(prepared.request, prepared.attachments, prepared.vihf)

    def vihf(self, patient=None, site=None):
        site = site or self.site
        return vihf_module.build_vihf(self.sign, self.settings.vihf, finess_geo=site.finess_geo,
                                      facility_type=site.healthcare_facility_type,
                                      patient_ins_cx=xds.ins_cx(patient or make_patient()),
                                      subject_rpps="10001234567", subject_specialty="G15_10/SM26")

    def lookup(self, *documents, patient=None):
        """{uniqueId: (entryUUID, short status)} of the DMP's entries for these versions (ITI-18 GetDocuments)."""
        patient = patient or make_patient()
        found = self.client.get_documents(unique_ids=[self.uid(d) for d in documents],
                                          patient_ins_cx=xds.ins_cx(patient), vihf=self.vihf(patient))
        assert found is not None
        return {e.unique_id: (e.entry_uuid, e.availability) for e in found}

    def withdrawal(self, document, entry_uuid, *, new_status=DELETED, original_status=APPROVED, patient=None,
                   site=None):
        return prepare.withdrawal(self.settings, self.sign, site=site or self.site, patient=patient or make_patient(),
                                  document=document, target_entry_uuid=entry_uuid, submission_time=WHEN,
                                  new_status=new_status, original_status=original_status)

    def withdraw(self, document, entry_uuid, **kwargs) -> outcome.Outcome:
        prepared = self.withdrawal(document, entry_uuid, **kwargs)
        return self.client.update_document_set(prepared.request, prepared.vihf)

    def report(self) -> dict:
        return sandbox_report.report(self.sandbox.state.path)


@pytest.fixture
def world(tmp_path, pki, auth_credential, sign_credential, start):
    w = World(tmp_path, pki, auth_credential, sign_credential, start())
    yield w
    w.client.close()


def codes(result: outcome.Outcome) -> list[str]:
    return [e.code for e in result.errors]


V1, V2, V3 = (make_document(version=v, title=f"Lettre de sortie v{v}") for v in (1, 2, 3))


# --- end to end -------------------------------------------------------------------------------------


def test_feed_replace_then_withdraw(tmp_path, pki, auth_credential, sign_credential, start):
    """v1 fed; v2 replaces it (RPLC to the entryUUID ITI-18 gives for v1's uniqueId); v2 withdrawn (ITI-57):
    the DMP ends with v1 Deprecated and v2 Deleted. The sandbox runs every check (CDA XSD and schematron too)."""
    w = World(tmp_path, pki, auth_credential, sign_credential, start(fast=False))
    try:
        assert w.feed(V1).kind == outcome.ACCEPTED
        ((v1_entry, v1_status),) = w.lookup(V1).values()
        assert v1_status == "Approved"

        result = w.feed(V2, replaces=Replaces(v1_entry, w.uid(V1), V1.version))
        assert result.kind == outcome.ACCEPTED, result.message
        found = w.lookup(V1, V2)
        assert found[w.uid(V1)] == (v1_entry, "Deprecated")
        v2_entry, v2_status = found[w.uid(V2)]
        assert v2_status == "Approved" and v2_entry != v1_entry

        assert w.withdraw(V2, v2_entry).kind == outcome.ACCEPTED
        assert w.lookup(V1, V2) == {w.uid(V1): (v1_entry, "Deprecated"), w.uid(V2): (v2_entry, "Deleted")}
        by_entry = w.client.get_documents(entry_uuids=[v2_entry], patient_ins_cx=xds.ins_cx(make_patient()),
                                          vihf=w.vihf())
        assert [(e.unique_id, e.availability) for e in by_entry] == [(w.uid(V2), "Deleted")]
        # the older queries keep working
        ss = ids.submission_set_unique_id(w.root, [V2.key])
        assert w.client.find_submission_set(ss, xds.ins_cx(make_patient()), w.vihf()) is True

        rep = w.report()
        assert (rep["replacements"], rep["withdrawals"], rep["archivals"]) == (1, 1, 0)
        assert rep["statuses"] == {"Deleted": 1, "Deprecated": 1}
        assert rep["rejected"] == 0 and rep["duplicate_deliveries"] == 0
        assert "replacements: 1, withdrawals: 1, archivals: 0" in sandbox_report.render_text(rep)
    finally:
        w.client.close()


# --- RPLC refusals ------------------------------------------------------------------------------------


def test_a_replacement_of_an_unknown_entry_is_refused(world):
    result = world.feed(V2, replaces=Replaces("urn:uuid:00000000-0000-4000-8000-0000000000aa", world.uid(V1), 1))
    assert (result.kind, codes(result)) == (outcome.PERMANENT, ["UnresolvedReferenceException"])
    assert world.lookup(V2) == {}  # nothing stored


def test_a_replacement_of_a_deprecated_entry_is_refused(world):
    world.feed(V1)
    ((v1_entry, _),) = world.lookup(V1).values()
    assert world.feed(V2, replaces=Replaces(v1_entry, world.uid(V1), 1)).kind == outcome.ACCEPTED
    result = world.feed(V3, replaces=Replaces(v1_entry, world.uid(V1), 1))  # v1 is Deprecated now
    assert (result.kind, codes(result)) == (outcome.PERMANENT, ["XDSRegistryDeprecatedDocumentError"])
    assert "Deprecated" in result.errors[0].context
    assert world.lookup(V1, V2, V3) == {world.uid(V1): (v1_entry, "Deprecated"),
                                       world.uid(V2): (world.lookup(V2)[world.uid(V2)][0], "Approved")}


def test_a_replacement_of_a_deleted_entry_is_refused(world):
    world.feed(V1)
    ((v1_entry, _),) = world.lookup(V1).values()
    assert world.withdraw(V1, v1_entry).kind == outcome.ACCEPTED
    result = world.feed(V2, replaces=Replaces(v1_entry, world.uid(V1), 1))
    assert codes(result) == ["XDSRegistryDeprecatedDocumentError"] and "Deleted" in result.errors[0].context


def test_a_replacement_of_another_patients_entry_is_refused(world):
    other = make_patient(**OTHER_PATIENT)
    theirs = make_document(document_id="THEIRS", patient_id=other.patient_id)
    assert world.feed(theirs, patient=other).kind == outcome.ACCEPTED
    ((their_entry, _),) = world.lookup(theirs, patient=other).values()
    result = world.feed(V2, replaces=Replaces(their_entry, world.uid(theirs), None))
    assert codes(result) == ["XDSPatientIdDoesNotMatch"]
    assert world.lookup(theirs, patient=other)[world.uid(theirs)][1] == "Approved"


# --- ITI-57 -------------------------------------------------------------------------------------------


def test_archive_then_delete_as_the_gie_examples(world):
    """TD3.3d: Approved → Archived; TD3.3c: Archived → Deleted."""
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    assert world.withdraw(V1, entry, new_status=ARCHIVED).kind == outcome.ACCEPTED
    assert world.lookup(V1)[world.uid(V1)] == (entry, "Archived")
    refused = world.withdraw(V1, entry)  # OriginalStatus Approved, but it is Archived now
    assert (refused.kind, codes(refused)) == (outcome.PERMANENT, ["XDSMetadataUpdateError"])
    assert world.withdraw(V1, entry, original_status=ARCHIVED).kind == outcome.ACCEPTED
    assert world.lookup(V1)[world.uid(V1)] == (entry, "Deleted")
    rep = world.report()
    assert (rep["withdrawals"], rep["archivals"], rep["statuses"]) == (1, 1, {"Deleted": 1})


def test_the_same_withdrawal_twice_is_a_duplicate_submission_set(world):
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    assert world.withdraw(V1, entry).kind == outcome.ACCEPTED
    again = world.withdraw(V1, entry)
    assert "XDSDuplicateUniqueIdInRegistry" in codes(again) and again.duplicate_submission
    assert world.report()["withdrawals"] == 1


def test_a_withdrawal_of_an_unknown_entry_is_refused(world):
    result = world.withdraw(V1, "urn:uuid:00000000-0000-4000-8000-0000000000bb")
    assert codes(result) == ["UnresolvedReferenceException"]


def test_only_the_author_structure_may_withdraw(world):
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    other_site = world.settings.structure.sites[1]
    result = world.withdraw(V1, entry, site=other_site)  # its VIHF and authorInstitution name the other site
    assert codes(result) == ["XDSMetadataUpdateError"] and "structure auteur" in result.errors[0].context
    assert world.lookup(V1)[world.uid(V1)][1] == "Approved"


def test_a_withdrawal_naming_another_patient_is_refused(world):
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    result = world.withdraw(V1, entry, patient=make_patient(**OTHER_PATIENT))
    assert codes(result) == ["XDSPatientIDReconciliationError"]


def test_a_vihf_for_another_patient_is_refused(world):
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    prepared = world.withdrawal(V1, entry)
    result = world.client.update_document_set(prepared.request, world.vihf(make_patient(**OTHER_PATIENT)))
    assert "XDSPatientIdDoesNotMatch" in codes(result)
    assert world.lookup(V1)[world.uid(V1)][1] == "Approved"


def test_a_new_status_other_than_deleted_or_archived_is_refused(world):
    world.feed(V1)
    ((entry, _),) = world.lookup(V1).values()
    prepared = world.withdrawal(V1, entry)
    request = copy.deepcopy(prepared.request)
    request.find(".//{%s}Slot[@name='NewStatus']//{%s}Value" % (xds.RIM, xds.RIM)).text = DEPRECATED
    result = world.client.update_document_set(request, prepared.vihf)
    assert codes(result) == ["XDSMetadataUpdateOperationError"]


def test_the_gie_examples_fail_only_on_their_demo_vihf(world):
    """TD3.3c / TD3.3d pass the sandbox's ITI-57 metadata checks (their missing owner ids are tolerated, as by
    the DMP); only their VIHF (direct authentication, unsigned demo token) and addressing are refused."""
    for name in ("TD3.3c_Supprimer_un_document_requete.xml", "TD3.3d_Archiver_un_document_requete.xml"):
        env = etree.parse(str(MESSAGES / name)).getroot()
        request, errors = checks.check_update(env, world.sandbox.httpd.app.settings)
        assert request is not None and request.changes[0].target == "urn:uuid:fe5287a2-ae6a-11eb-8f5d-0050569e422e"
        assert {e.check.split(".")[0] for e in errors} <= {"vihf", "wsa"}, errors


def test_find_documents_filters_on_status(world):
    world.feed(V1)
    ((v1_entry, _),) = world.lookup(V1).values()
    world.feed(V2, replaces=Replaces(v1_entry, world.uid(V1), 1))
    documents = world.sandbox.state.documents_of(xds.ins_cx(make_patient()))
    assert sorted(d["status"] for d in documents) == sorted([APPROVED, DEPRECATED])


def test_a_state_file_from_before_statuses_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE documents (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, entry_uuid TEXT,
        submission_uid TEXT NOT NULL, patient TEXT NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL, type_code TEXT,
        finess TEXT, is_signature INTEGER NOT NULL DEFAULT 0, set_id TEXT, version TEXT,
        duplicate INTEGER NOT NULL DEFAULT 0, stored_at TEXT NOT NULL, content BLOB);
        INSERT INTO documents (uid, entry_uuid, submission_uid, patient, hash, size, stored_at)
        VALUES ('1.2.3', 'urn:uuid:00000000-0000-4000-8000-000000000001', '1.2', 'p', 'h', 1, 'now');""")
    db.commit()
    db.close()
    state = SandboxState(path)
    try:
        assert state.status_of("urn:uuid:00000000-0000-4000-8000-000000000001") == APPROVED
    finally:
        state.close()
    assert sandbox_report.report(path)["statuses"] == {"Approved": 1}
