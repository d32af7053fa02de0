"""The scan reads ledger states for several patients per query and probes content (size, first and last
bytes) in a dry run: both must decide exactly as one query per patient and whole reads did."""

import datetime as dt

from hypothesis import given, settings as hsettings, strategies as st

from connector import rules, samples, scan as scan_module
from connector.actions.context import open_store
from connector.content import content_probe
from connector.store import Store
from connector.ledger.repo import DocState
from connector.ledger.schema import DEFERRED, FAILED, FED, SUBMITTING
from connector.scan import scan
from conftest import make_document, make_settings


class FakeLedger:
    """Ledger states for the sample store: every state the scan knows, plus earlier versions FED."""

    def __init__(self, rows: dict[tuple[str, int], DocState]):
        self.rows, self.queries = rows, 0

    def states(self, keys):
        self.queries += 1
        ids = {k[0] for k in keys}
        return {k: s for k, s in self.rows.items() if k[0] in ids}


def _sample_settings(tmp_path):
    store_dir = tmp_path / "samples"
    samples.create_sample_store(store_dir)
    return make_settings(tmp_path, store={"url": f"sqlite:///{store_dir / 'store.sqlite3'}", "content_root": str(store_dir)})


def _ledger_rows(keys):
    later = dt.datetime(2999, 1, 1)
    states = [(FED, None), (FAILED, None), (SUBMITTING, None), (DEFERRED, later), (DEFERRED, None)]
    rows = {}
    for i, (document_id, version) in enumerate(sorted(keys)):
        if i % 3 == 0:
            state, next_at = states[(i // 3) % len(states)]
            rows[(document_id, version)] = DocState(document_id, version, state, "X", i % 7 == 0, next_at, None)
        elif i % 4 == 1:  # an earlier version was fed: the store's one replaces it
            rows[(document_id, version - 1)] = DocState(document_id, version - 1, FED, None, False, None, None)
    return rows


def _decisions(groups):
    return [[(d.document_id, d.version, d.patient_id, d.reason, d.detail, d.content, d.action) for d in g]
            for g in groups]


def test_batched_states_decide_like_one_query_per_patient(tmp_path, monkeypatch):
    settings = _sample_settings(tmp_path)
    store = open_store(settings)
    rows = _ledger_rows(samples.expected_decisions())
    assert any(s.state == FED for s in rows.values())

    monkeypatch.setattr(scan_module, "STATES_BATCH", 1)  # one query per patient, as before batching
    one = FakeLedger(rows)
    expected = _decisions(scan(store, one, settings))
    monkeypatch.setattr(scan_module, "STATES_BATCH", 500)
    batched = FakeLedger(rows)
    got = _decisions(scan(store, batched, settings))

    assert got == expected
    assert len(got) == one.queries > 10 and batched.queries == 1  # still one group per patient, in order
    reasons = {d[3] for g in got for d in g}
    assert {"ALREADY_FED", "DEFERRED_NOT_DUE", "IN_PROGRESS", "HELD", None} <= reasons
    assert any(d[6] == "REPLACE" for g in got for d in g)


def test_dry_run_probe_decides_like_reading_the_whole_content(tmp_path):
    settings = _sample_settings(tmp_path)
    store = open_store(settings)
    loaded = [(d[:5]) for g in _decisions(scan(store, None, settings)) for d in g]
    probed = [(d[:5]) for g in _decisions(scan(store, None, settings, load_content=False)) for d in g]
    assert probed == loaded
    assert {"CONTENT_INVALID", "CONTENT_MISSING"} <= {d[3] for d in probed}


_edges = st.sampled_from([b"%PDF-1.4\n", b"%%EOF", b"\xef\xbb\xbf  <", b"<x/>", b"\n", b"startxref\n9\n", b"xref\n",
                          b"1 0 obj"])


@hsettings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(_edges, st.binary(max_size=700)), max_size=8),
       mime=st.sampled_from(["application/pdf", "text/xml", "image/png", None]),
       limit=st.sampled_from([1, 1000, 10**6]))
def test_probe_check_equals_whole_content_check(tmp_path_factory, parts, mime, limit):
    content = b"".join(parts)
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "doc.bin").write_bytes(content)
    settings = make_settings(tmp, rules={"max_document_bytes": limit})
    document = make_document(content_path="doc.bin", mime_type=mime)
    store = Store("sqlite://", tmp)
    probe = content_probe(store, document)
    assert probe[0] == len(content)
    assert rules.check_content_probe(document, probe, settings) == rules.check_content(document, content, settings)
