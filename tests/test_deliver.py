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
    yield from make_world(tmp_path, pki, auth_credential, sign_credential, dmp)


def make_world(tmp_path, pki, auth_credential, sign_credential, dmp, ledger_url=None):
    settings = make_settings(tmp_path, dmp={"base_url": dmp.url, "ca_bundle": str(pki.ca_cert), "read_timeout": 2.0,
                                            "retry": {"in_run_attempts": 1}},
                             **({"ledger": {"url": ledger_url}} if ledger_url else {}))
    ledger = open_ledger(settings.ledger.url, auto_migrate=True)
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


# --- 6. nothing escapes a sending thread: every submission is settled --------------------------


def failure(*codes: str) -> bytes:
    rr = soap.registry_response("Failure", [(code, "refused", None, "Error") for code in codes])
    return soap.to_bytes(soap.envelope(rr, action="r", to="x"))


@pytest.fixture
def pg_world(tmp_path, pki, auth_credential, sign_credential, dmp, pg_url):
    yield from make_world(tmp_path, pki, auth_credential, sign_credential, dmp, ledger_url=pg_url)


@pytest.mark.parametrize("code", ["XDSRepositoryDuplicateUniqueIdInMessage", "DMP" + "X" * 200])
def test_a_dmp_error_code_longer_than_a_ledger_column_is_recorded_on_postgresql(pg_world, dmp, code):
    """39 characters did not fit documents.reason (32): settling failed inside the sender, the document stayed
    SUBMITTING. A realistic code is stored whole; a hostile one is cut at the column's length."""
    dmp.paths["repository"] = Behaviour(body=failure(code))
    result = pg_world.deliver(pg_world.journal())
    state = pg_world.document_state()
    assert (result.state, state.state) == ("FAILED", "FAILED")
    assert state.reason == code[:64]
    assert len(code) <= 64 or len(state.reason) == 64


class Exploding:
    """A client whose ITI-41 raises: a defect of ours, as far as the Deliverer can tell."""

    def __init__(self, client):
        self.client = client

    def provide_and_register(self, *args):
        raise RuntimeError("boom in the sender")

    def find_submission_set(self, *args):
        return self.client.find_submission_set(*args)


def test_an_unexpected_error_settles_the_submission_deferred_then_failed(world, dmp):
    dmp.paths["registry"] = Behaviour(body=adhoc_response())  # ITI-18: not in the DMP
    world.deliverer.client = Exploding(world.deliverer.client)
    record = world.journal()
    with pytest.raises(RuntimeError):
        world.deliverer.deliver_or_settle(record, world.prepared, world.patient)
    state = world.document_state()
    assert (state.state, state.reason) == ("DEFERRED", "INTERNAL_ERROR")  # a glitch gets another chance
    again = world.ledger.submission(record.id)
    with pytest.raises(RuntimeError):
        world.deliverer.deliver_or_settle(again, world.prepared, world.patient)
    state = world.document_state()
    assert (state.state, state.reason) == ("FAILED", "INTERNAL_ERROR")  # twice in a row: a defect, a human looks
    assert len(dmp.paths["registry"].requests) == 1  # the second time, it was asked for first (it had been tried)


def adhoc_response(*uids: str) -> bytes:
    from connector.dmp import iti18

    q = etree.Element(f"{{{soap.QUERY}}}AdhocQueryResponse", nsmap={"query": soap.QUERY, "rim": soap.RIM})
    q.set("status", soap.SUCCESS)
    objects = etree.SubElement(q, f"{{{soap.RIM}}}RegistryObjectList")
    for uid in uids:
        pkg = etree.SubElement(objects, f"{{{soap.RIM}}}RegistryPackage", id="urn:uuid:1")
        etree.SubElement(pkg, f"{{{soap.RIM}}}ExternalIdentifier", identificationScheme=iti18.SS_UNIQUE_ID_SCHEME,
                         value=uid)
    return soap.to_bytes(soap.envelope(q, action="urn:ihe:iti:2007:RegistryStoredQueryResponse", to="x"))


def test_an_exception_in_a_sender_thread_is_settled_and_shows_in_the_exit_code_and_status_check(tmp_path, pki,
                                                                                               monkeypatch):
    """It stranded the documents SUBMITTING, with a summary of zeros and exit 0."""
    import delivery_harness as h
    from click.testing import CliRunner

    from connector import cli

    def boom(self, *args):
        raise RuntimeError("boom in the sender")

    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    monkeypatch.setattr(DmpClient, "provide_and_register", boom)
    runner = CliRunner()
    eligible = h.sample_eligible()
    for run, state in ((1, "DEFERRED"), (2, "FAILED")):
        with h.sandbox(folder) as sb:
            folder.configure(sb.url, validation={"schematron": "off"},
                             **{"dmp.retry": {"deferred_min_minutes": 0, "deferred_max_minutes": 0}})
            result = runner.invoke(cli.main, ["run", "--config", str(folder.cfg)])
        assert result.exit_code == cli.EXIT_ATTENTION, (run, result.output)
        assert "INTERNAL_ERROR" in result.output
        states = h.ledger_states(folder.ledger_url)
        assert {states[k] for k in eligible} == {(state, "INTERNAL_ERROR")}, run
        check = runner.invoke(cli.main, ["status", "--config", str(folder.cfg), "--check"])
        assert check.exit_code == cli.EXIT_ATTENTION and "INTERNAL_ERROR" in check.output, (run, check.output)
    assert h.received(folder)["documents"] == 0


# --- journaled, never sent, then no longer sendable: the real CLI killed after journaling ---------


def _crashed_after_journal(tmp_path, pki):
    """A store of 3 patients (one document each), a run SIGKILLed right after journaling its first submission
    set (nothing sent); returns (folder, sandbox options, the journaled document's key and patient)."""
    import signal

    import delivery_harness as h

    keys = h.synthetic_store(tmp_path / "store", 3, seed=11, per_patient=(1, 1))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        crashed = h.run_cli(folder.cfg, crash_at="after_journal:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    (journaled,) = h.ledger_rows(folder.ledger_url, "SELECT d.document_id, d.version, s.patient_id, s.attempts "
                                 "FROM submissions s JOIN documents d ON d.submission_id = s.id")
    assert journaled.attempts == 0
    return folder, set(keys), (journaled.document_id, journaled.version), journaled.patient_id


def _store(folder, sql: str, **params) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{folder.store_db}")
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def _iti41_for(folder, key) -> int:
    import delivery_harness as h

    return h.ledger_rows(folder.ledger_url, "SELECT count(*) AS n FROM audit WHERE action = 'ITI-41' "
                         "AND document_ids LIKE :key", key=f"%{key[0]}:{key[1]}%")[0].n


@pytest.mark.parametrize("change, reason", [
    ("UPDATE dmp_patient SET opposed_to_feeding = 1 WHERE patient_id = :pid", "PATIENT_OPPOSED"),
    ("UPDATE dmp_patient SET deceased_at = '2026-11-30' WHERE patient_id = :pid", "PATIENT_DECEASED"),
])
def test_withdrawn_before_its_first_send_is_skipped_and_never_sent(tmp_path, pki, change, reason):
    import delivery_harness as h

    folder, keys, key, patient_id = _crashed_after_journal(tmp_path, pki)
    _store(folder, change, pid=patient_id)  # the patient opposed or died after the crash
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        h.run_until_done(folder.cfg)
    states = h.ledger_states(folder.ledger_url)
    assert states[key] == ("SKIPPED", reason)
    assert _iti41_for(folder, key) == 0
    h.assert_exactly_once(folder, keys - {key})  # the others are fed, once


def test_journaled_then_its_content_gone_is_failed_resend_impossible_never_sent(tmp_path, pki):
    import delivery_harness as h

    folder, keys, key, _ = _crashed_after_journal(tmp_path, pki)
    (folder.path / "store" / "documents" / f"{key[0]}.pdf").unlink()
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        result = h.run_cli(folder.cfg)
    assert result.returncode == 1, result.stderr[-3000:]  # a FAILED document needs a human
    assert h.open_work(folder.ledger_url) == []
    assert h.ledger_states(folder.ledger_url)[key] == ("FAILED", "RESEND_IMPOSSIBLE")
    assert _iti41_for(folder, key) == 0
    h.assert_exactly_once(folder, keys - {key})


def test_sent_then_its_content_gone_is_settled_by_iti18_not_failed(tmp_path, pki):
    """Killed after the DMP stored it: the content's loss makes a resend impossible, not the delivery. ITI-18
    finds it: FED, the ledger agreeing with the DMP."""
    import signal

    import delivery_harness as h

    keys = h.synthetic_store(tmp_path / "store", 3, seed=11, per_patient=(1, 1))
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder) as sb:
        folder.configure(sb.url)
        crashed = h.run_cli(folder.cfg, crash_at="after_send:1")
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        sent = h.ledger_rows(folder.ledger_url, "SELECT d.document_id, d.version FROM submissions s "
                             "JOIN documents d ON d.submission_id = s.id WHERE s.attempts > 0 ORDER BY s.id")[0]
        key = (sent.document_id, sent.version)
        (folder.path / "store" / "documents" / f"{key[0]}.pdf").unlink()
        h.run_until_done(folder.cfg)
    assert h.ledger_states(folder.ledger_url)[key] == ("FED", None)
    assert _iti41_for(folder, key) == 0  # not resent (the one send was killed before its audit line)
    h.assert_exactly_once(folder, set(keys))
