"""Deliverer: one journaled submission set, a real ledger, the real DMP client against a hostile DMP
(hostile_server.py): what is sent, and how the submission is settled."""

from __future__ import annotations

import datetime as dt

import pytest
from hostile_server import Behaviour, running_server, server_context
from lxml import etree

from conftest import make_patient, make_settings
from connector.deliver import Deliverer
from connector.dmp import soap
from connector.dmp.client import DmpClient
from connector.ledger.repo import SubmissionDoc, open_ledger, utcnow
from connector.ledger.schema import DEFERRED, PENDING
from connector.prepare import Prepared
from connector.trust.vihf import build_vihf
from connector.config import VihfSettings

SS_UID = "1.2.250.1.999.42.3.77"
DOC_UID = "1.2.250.1.999.42.1.77"


class WriteBack:
    """The store, as the Deliverer sees it: only its dmp_feed_status write-back."""

    def __init__(self):
        self.rows = []

    def write_back(self, rows):
        self.rows += rows


@pytest.fixture
def dmp(pki):
    with running_server(server_context(pki)) as srv:
        yield srv


@pytest.fixture
def world(tmp_path, pki, auth_credential, sign_credential, dmp):
    settings = make_settings(tmp_path, dmp={"base_url": dmp.url, "ca_bundle": str(pki.ca_cert), "read_timeout": 2.0,
                                            "retry": {"in_run_attempts": 1}})
    ledger = open_ledger(settings.ledger.url)
    client = DmpClient(settings.dmp, auth_credential)
    patient = make_patient()
    vihf = build_vihf(sign_credential, VihfSettings(), finess_geo="0B0999998", facility_type="SA01",
                      patient_ins_cx="279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH", subject_rpps="10001234567",
                      subject_specialty="G15_10/SM26")
    request = etree.Element(f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": soap.XDSB})
    etree.SubElement(request, f"{{{soap.XDSB}}}Document", id="Document01")
    prepared = Prepared(SS_UID, request, {"Document01": b"%PDF-1.4 test"}, vihf, b"", {})
    run_id = ledger.start_run("run")
    deliverer = Deliverer(settings, ledger, WriteBack(), client, run_id)
    try:
        yield World(settings, ledger, deliverer, prepared, patient, run_id)
    finally:
        client.close()


class World:
    def __init__(self, settings, ledger, deliverer, prepared, patient, run_id):
        self.settings, self.ledger, self.deliverer = settings, ledger, deliverer
        self.prepared, self.patient, self.run_id = prepared, patient, run_id

    def journal(self, *, sent_before: int = 0):
        """A journaled submission set of one document; `sent_before`: attempts an earlier run recorded."""
        self.ledger.record_decisions([dict(document_id="DOC0001", version=1, patient_id="IPP0001", state=PENDING,
                                           finess_geo="0B0999998", type_code="11490-0")], self.run_id)
        record = self.ledger.journal_submission(
            submission_set_uid=SS_UID, entry_uuid="urn:uuid:00000000-0000-4000-8000-000000000077",
            patient_id="IPP0001", finess_geo="0B0999998", submission_time=utcnow(),
            docs=[SubmissionDoc("DOC0001", 1, DOC_UID, "urn:uuid:00000000-0000-4000-8000-000000000078")],
            run_id=self.run_id, owner="test", lease=dt.timedelta(minutes=10))
        for _ in range(sent_before):
            self.ledger.record_attempt(record.id)
        return self.ledger.submission(record.id)

    def deliver(self, record, withdraw=None):
        return self.deliverer.deliver(record, self.prepared, self.patient, withdraw)

    def document_state(self):
        return self.ledger.states([("DOC0001", 1)])[("DOC0001", 1)]


def success() -> bytes:
    return soap.to_bytes(soap.envelope(soap.registry_response("Success"), action="r", to="x"))


def iti18_unreachable(dmp):
    dmp.paths["registry"] = registry = Behaviour(status=503, content_type="text/html", body=b"<html>down</html>")
    return registry


# --- 0. no answer from ITI-18: never resent blind ---------------------------------------------


def test_resumed_after_a_crash_with_iti18_unreachable_is_not_resent(world, dmp):
    """Killed after sending (attempts recorded), the next run cannot ask the DMP: nothing is sent."""
    dmp.paths["repository"] = repository = Behaviour(body=success())
    registry = iti18_unreachable(dmp)
    result = world.deliver(world.journal(sent_before=1))
    assert repository.requests == []
    assert len(registry.requests) == 1
    assert (result.state, world.document_state().state, world.document_state().reason) == (
        DEFERRED, DEFERRED, "UNKNOWN_OUTCOME")


def test_unknown_outcome_in_the_run_with_iti18_unreachable_is_not_resent(world, dmp):
    """Sent, no reply, and ITI-18 cannot tell: sent once, never twice."""
    dmp.paths["repository"] = repository = Behaviour(close_without_reply=True)
    registry = iti18_unreachable(dmp)
    result = world.deliver(world.journal())
    assert len(repository.requests) == 1
    assert len(registry.requests) == 1
    assert (result.state, world.document_state().state, world.document_state().reason) == (
        DEFERRED, DEFERRED, "UNKNOWN_OUTCOME")


def test_withdrawn_after_a_send_with_iti18_unreachable_is_deferred_not_skipped(world, dmp):
    """The patient opposed since the first send: unless the DMP says it does not hold it, it is not withdrawn."""
    dmp.paths["repository"] = repository = Behaviour(body=success())
    registry = iti18_unreachable(dmp)
    result = world.deliver(world.journal(sent_before=1), withdraw=("OPPOSED", "document DOC0001 v1: opposed"))
    assert repository.requests == []
    assert len(registry.requests) == 1
    assert (result.state, world.document_state().state, world.document_state().reason) == (
        DEFERRED, DEFERRED, "UNKNOWN_OUTCOME")
