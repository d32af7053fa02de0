"""Issue 17, the store contract's corrections as the scan sees them: a new version of a fed document, a fed
document CANCELLED in the store, a masking flag changed on a fed document, a document fed INVISIBLE_PATIENT whose
unmask is due (announcement consultation, else `rules.unmask_after_days` after its first feeding)."""

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from connector import rules, scan as scan_module
from connector.ledger.repo import DocState
from connector.ledger.schema import APPROVED, DELETED, DEPRECATED, FED, REPLACE, WITHDRAW
from connector.rules import Reason
from connector.samples import minimal_pdf
from connector.scan import scan
from connector.store import Store, dmp_document, dmp_patient, metadata
from conftest import make_document, make_patient, make_settings

FED_AT = dt.datetime(2026, 12, 1, 10, 0)


class FakeLedger:
    def __init__(self, rows):
        self.rows = rows

    def states(self, keys):
        ids = {k[0] for k in keys}
        return {k: s for k, s in self.rows.items() if k[0] in ids}


def fed(version, *, masking="", status=APPROVED, fed_at=FED_AT, document_id="DOC0001"):
    return DocState(document_id, version, FED, None, False, None, 1, dmp_status=status,
                    dmp_entry_uuid=f"urn:uuid:00000000-0000-4000-8000-00000000000{version}", masking=masking,
                    cda_version=version, fed_at=fed_at)


@pytest.fixture
def store_of(tmp_path):
    (tmp_path / "doc1.pdf").write_bytes(minimal_pdf("corrections"))
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"

    def make(*documents):
        engine = sa.create_engine(url)
        metadata.drop_all(engine)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(dmp_patient), [dataclasses.asdict(make_patient())])
            conn.execute(sa.insert(dmp_document), [dataclasses.asdict(d) for d in documents])
        engine.dispose()
        return Store(url, tmp_path)
    return make


def decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=1), **rules_overrides):
    settings = make_settings(tmp_path, rules=rules_overrides) if rules_overrides else make_settings(tmp_path)
    original = scan_module.utcnow
    scan_module.utcnow = lambda: now  # the scan's clock (an unmask is due at a time)
    try:
        return {(d.document_id, d.version): d for group in scan(store, FakeLedger(rows), settings) for d in group}
    finally:
        scan_module.utcnow = original


def test_a_fed_document_unchanged_is_already_fed(tmp_path, store_of):
    found = decisions(tmp_path, store_of(make_document()), {("DOC0001", 1): fed(1)})
    assert found[("DOC0001", 1)].reason == Reason.ALREADY_FED


def test_a_new_version_of_a_fed_document_replaces_the_approved_one(tmp_path, store_of):
    store = store_of(make_document(), make_document(version=2, title="Lettre corrigée"))
    found = decisions(tmp_path, store, {("DOC0001", 1): fed(1)})
    v2 = found[("DOC0001", 2)]
    assert v2.eligible and v2.action == REPLACE and v2.replaces.version == 1
    assert v2.replaces.dmp_entry_uuid == fed(1).dmp_entry_uuid
    assert found[("DOC0001", 1)].reason == Reason.ALREADY_FED and found[("DOC0001", 1)].action is None




def test_a_new_version_not_destined_to_the_dmp_leaves_the_fed_one_and_says_so(tmp_path, store_of):
    store = store_of(make_document(), make_document(version=2, status=rules.NOT_FOR_DMP))
    found = decisions(tmp_path, store, {("DOC0001", 1): fed(1)})
    assert found[("DOC0001", 2)].reason == Reason.NOT_FOR_DMP
    v1 = found[("DOC0001", 1)]
    assert v1.reason == Reason.ALREADY_FED and v1.action is None
    assert "replaces" not in v1.detail and "not destined to the DMP" in v1.detail


def test_a_new_version_still_goes_through_the_rules(tmp_path, store_of):
    store = store_of(make_document(), make_document(version=2, author_rpps=None))
    assert decisions(tmp_path, store, {("DOC0001", 1): fed(1)})[("DOC0001", 2)].reason == Reason.METADATA_MISSING


def test_a_cancelled_fed_document_is_withdrawn(tmp_path, store_of):
    found = decisions(tmp_path, store_of(make_document(status="CANCELLED")), {("DOC0001", 1): fed(1)})
    d = found[("DOC0001", 1)]
    assert d.eligible and d.action == WITHDRAW and d.replaces.version == 1 and "CANCELLED" in d.detail


def test_a_cancelled_new_version_withdraws_the_fed_one(tmp_path, store_of):
    store = store_of(make_document(), make_document(version=2, status="CANCELLED"))
    found = decisions(tmp_path, store, {("DOC0001", 1): fed(1)})
    assert found[("DOC0001", 1)].action == WITHDRAW
    assert found[("DOC0001", 2)].reason == Reason.DOCUMENT_NOT_VALIDATED


def test_withdrawal_of_cancelled_documents_can_be_turned_off(tmp_path, store_of):
    found = decisions(tmp_path, store_of(make_document(status="CANCELLED")), {("DOC0001", 1): fed(1)},
                      withdraw_cancelled=False)
    d = found[("DOC0001", 1)]
    assert d.reason == Reason.ALREADY_FED and "withdraw_cancelled" in d.detail




def test_withdrawn_and_replaced_entries_are_left_alone(tmp_path, store_of):
    store = store_of(make_document(status="CANCELLED"), make_document(version=2, status="CANCELLED"))
    found = decisions(tmp_path, store, {("DOC0001", 1): fed(1, status=DEPRECATED),
                                        ("DOC0001", 2): fed(2, status=DELETED)})
    assert found[("DOC0001", 1)].reason == Reason.REPLACED
    assert found[("DOC0001", 2)].reason == Reason.WITHDRAWN


def test_a_masking_change_replaces_the_entry_with_the_new_codes(tmp_path, store_of):
    store = store_of(make_document(mask_professionals=True))
    d = decisions(tmp_path, store, {("DOC0001", 1): fed(1, masking="")})[("DOC0001", 1)]
    assert d.eligible and d.action == REPLACE and d.replaces.version == 1
    assert rules.masking(d.document) == "MASQUE_PS"




def test_unmask_is_due_unmask_after_days_after_the_first_feeding(tmp_path, store_of):
    store = store_of(make_document(invisible_to_patient=True))
    rows = {("DOC0001", 1): fed(1, masking="INVISIBLE_PATIENT")}
    before = decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=30, seconds=-1))[("DOC0001", 1)]
    assert before.reason == Reason.ALREADY_FED
    due = decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=30))[("DOC0001", 1)]
    assert due.eligible and due.action == REPLACE and rules.masking(due.document) == ""
    shorter = decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=7), unmask_after_days=7)
    assert shorter[("DOC0001", 1)].action == REPLACE


def test_unmask_is_due_at_the_announcement_consultation(tmp_path, store_of):
    announced = dt.datetime(2026, 12, 3, 15, 0)  # local time (Europe/Paris, UTC+1 in December)
    store = store_of(make_document(invisible_to_patient=True, announced_at=announced))
    rows = {("DOC0001", 1): fed(1, masking="INVISIBLE_PATIENT")}
    before = decisions(tmp_path, store, rows, now=dt.datetime(2026, 12, 3, 13, 59))[("DOC0001", 1)]
    assert before.reason == Reason.ALREADY_FED
    due = decisions(tmp_path, store, rows, now=dt.datetime(2026, 12, 3, 14, 0))[("DOC0001", 1)]
    assert due.action == REPLACE and rules.masking(due.document) == ""




def test_once_unmasked_nothing_more_is_due(tmp_path, store_of):
    store = store_of(make_document(invisible_to_patient=True))
    rows = {("DOC0001", 1): fed(1, masking="")}  # the replacement without INVISIBLE_PATIENT is in the DMP
    found = decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=60))
    assert found[("DOC0001", 1)].reason == Reason.ALREADY_FED


def test_a_first_feeding_after_the_announcement_is_visible_at_once(tmp_path, store_of):
    store = store_of(make_document(invisible_to_patient=True, announced_at=dt.datetime(2026, 11, 30, 9, 0)))
    d = decisions(tmp_path, store, {})[("DOC0001", 1)]
    assert d.eligible and d.action is None and rules.masking(d.document) == ""


def test_a_new_version_after_the_unmask_stays_visible(tmp_path, store_of):
    store = store_of(make_document(invisible_to_patient=True), make_document(version=2, invisible_to_patient=True))
    rows = {("DOC0001", 1): fed(1, masking="")}
    d = decisions(tmp_path, store, rows, now=FED_AT + dt.timedelta(days=40))[("DOC0001", 2)]
    assert d.action == REPLACE and rules.masking(d.document) == ""
    early = decisions(tmp_path, store, {("DOC0001", 1): fed(1, masking="INVISIBLE_PATIENT")})[("DOC0001", 2)]
    assert rules.masking(early.document) == "INVISIBLE_PATIENT"


def test_a_held_fed_document_gets_no_correction(tmp_path, store_of):
    state = dataclasses.replace(fed(1), held=True)
    found = decisions(tmp_path, store_of(make_document(status="CANCELLED")), {("DOC0001", 1): state})
    assert found[("DOC0001", 1)].reason == scan_module.HELD


@pytest.mark.parametrize("flags", [(False, False, False), (True, False, True), (True, True, True), (False, True, False)])
def test_masking_codes_round_trip(flags):
    document = make_document(mask_professionals=flags[0], invisible_to_patient=flags[1],
                             invisible_to_legal_representatives=flags[2])
    assert rules.with_masking(make_document(), rules.masking(document)) == document
