"""Deterministic ids: OID grammar, length limit, reproducibility, distinctness."""

import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.payload import ids

OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

# OID roots as the configuration allows them: valid grammar, at most 30 characters.
arc = st.integers(min_value=0, max_value=10**6).map(str)
oid_roots = st.builds(
    lambda first, rest: ".".join([first, *rest]),
    st.sampled_from(["0", "1", "2"]),
    st.lists(arc, min_size=1, max_size=6),
).filter(lambda r: len(r) <= 30)
document_ids = st.text(min_size=1, max_size=80)
versions = st.integers(min_value=0, max_value=10**10 - 1)
keys = st.lists(st.tuples(document_ids, versions), min_size=1, max_size=8)


def is_urn_uuid(value: str) -> bool:
    return value.startswith("urn:uuid:") and str(uuid.UUID(value[9:])) == value[9:]


@given(oid_roots, document_ids, versions)
def test_document_unique_id_is_a_short_oid_under_the_root(root, doc_id, version):
    uid = ids.document_unique_id(root, doc_id, version)
    assert OID_RE.match(uid), uid
    assert len(uid) <= 64
    assert uid.startswith(root + ".1.")
    assert uid == ids.document_set_id(root, doc_id) + "." + str(version)
    assert uid == ids.document_unique_id(root, doc_id, version)  # deterministic


@given(oid_roots, keys)
def test_submission_set_and_signature_ids_are_short_oids(root, ks):
    ss = ids.submission_set_unique_id(root, ks)
    sig = ids.signature_unique_id(root, ss)
    for value, arc_ in ((ss, ".2."), (sig, ".4.")):
        assert OID_RE.match(value) and len(value) <= 64
        assert value.startswith(root + arc_)
    assert is_urn_uuid(ids.submission_set_entry_uuid(root, ks))
    assert is_urn_uuid(ids.signature_entry_uuid(root, ss))


@given(oid_roots, keys, st.randoms())
def test_submission_set_ids_do_not_depend_on_order(root, ks, rnd):
    shuffled = list(ks)
    rnd.shuffle(shuffled)
    assert ids.submission_set_unique_id(root, ks) == ids.submission_set_unique_id(root, shuffled)
    assert ids.submission_set_entry_uuid(root, ks) == ids.submission_set_entry_uuid(root, shuffled)


@settings(max_examples=300)
@given(oid_roots, st.tuples(document_ids, versions), st.tuples(document_ids, versions))
def test_distinct_documents_get_distinct_ids(root, a, b):
    if a == b:
        return
    assert ids.document_unique_id(root, *a) != ids.document_unique_id(root, *b)
    assert ids.entry_uuid(root, *a) != ids.entry_uuid(root, *b)
    assert is_urn_uuid(ids.entry_uuid(root, *a))


@given(oid_roots, keys, keys)
def test_distinct_sets_get_distinct_ids(root, a, b):
    if set(a) == set(b):
        return
    assert ids.submission_set_unique_id(root, a) != ids.submission_set_unique_id(root, b)
    assert ids.submission_set_entry_uuid(root, a) != ids.submission_set_entry_uuid(root, b)


@given(st.tuples(oid_roots, oid_roots).filter(lambda t: t[0] != t[1]), document_ids)
def test_distinct_roots_get_distinct_ids(roots, doc_id):
    a, b = roots
    assert ids.document_unique_id(a, doc_id, 1) != ids.document_unique_id(b, doc_id, 1)
    assert ids.entry_uuid(a, doc_id, 1) != ids.entry_uuid(b, doc_id, 1)


def test_known_values_are_stable_across_releases():
    # Ids are stored in the ledger and in the DMP: an algorithm change would break resends.
    root = "1.2.250.1.999.42"
    assert ids.document_unique_id(root, "DOC0001", 1) == KNOWN["uid"]
    assert ids.entry_uuid(root, "DOC0001", 1) == KNOWN["entry"]
    assert ids.submission_set_unique_id(root, [("DOC0001", 1)]) == KNOWN["ss"]


def test_ids_of_the_different_objects_do_not_collide():
    root = "1.2.250.1.999.42"
    ks = [("DOC0001", 1)]
    ss = ids.submission_set_unique_id(root, ks)
    uuids = {
        ids.entry_uuid(root, "DOC0001", 1),
        ids.submission_set_entry_uuid(root, ks),
        ids.signature_entry_uuid(root, ss),
    }
    assert len(uuids) == 3
    oids = {ids.document_unique_id(root, "DOC0001", 1), ss, ids.signature_unique_id(root, ss), ids.ipp_authority(root)}
    assert len(oids) == 4


def test_child_uuids_are_stable_and_distinct_per_role():
    parent = ids.entry_uuid("1.2.3", "D", 1)
    assert ids.child_uuid(parent, "classCode") == ids.child_uuid(parent, "classCode")
    assert ids.child_uuid(parent, "classCode") != ids.child_uuid(parent, "typeCode")
    assert is_urn_uuid(ids.child_uuid(parent, "typeCode"))


@given(st.uuids(), st.text())
def test_child_uuid_is_uuid5_of_its_parent(parent, role):
    """The ids already sent to the DMP stay the same: child_uuid is uuid5(parent, role), whatever the role."""
    assert ids.child_uuid(f"urn:uuid:{parent}", role) == f"urn:uuid:{uuid.uuid5(parent, role)}"


@pytest.mark.parametrize("bad", [-1, True, "1", 1.0])
def test_bad_versions_are_refused(bad):
    with pytest.raises(ValueError):
        ids.document_unique_id("1.2.3", "D", bad)


def test_too_long_ids_are_refused():
    with pytest.raises(ValueError):
        ids.document_unique_id("1.2.250.1.999.1234567.12345678", "D", 10**12)
    with pytest.raises(ValueError):
        ids.submission_set_unique_id("1.2.3", [])


KNOWN = {
    "uid": "1.2.250.1.999.42.1.16615442650499937370.1",
    "entry": "urn:uuid:5329383b-cdad-5b58-ab49-d35f6c9455e2",
    "ss": "1.2.250.1.999.42.2.12856719412135850262",
}
