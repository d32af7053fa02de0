"""Issue 17's criterion: over the sample store extended with a new version, a cancellation, a masking change and
an announced document (`samples correct`), two runs leave the sandbox DMP with exactly the expected Approved /
Deprecated / Deleted entries, each step visible in `status` and in the audit export."""

import json

from click.testing import CliRunner

from connector import config, samples
from connector.actions import demo, run as run_action
from connector.cli import main
from connector.payload import ids
from connector.sandbox import report, server
from connector.sandbox.state import SandboxState


def test_two_runs_over_the_corrected_samples_leave_exactly_the_expected_entries(tmp_path):
    demo.prepare_folder(tmp_path, "https://127.0.0.1:1/si-dmp-server/v2/services")
    state = tmp_path / "sandbox.sqlite3"
    cli = lambda *args: CliRunner().invoke(main, [*args, "--config", str(tmp_path / "dmp-connector.toml")])  # noqa: E731
    with server.serve(pki_dir=tmp_path / "pki", state_path=state, fast=True) as sandbox:
        settings = config.load(demo.prepare_folder(tmp_path, sandbox.url))
        first = run_action.run(settings)
        corrected = CliRunner().invoke(main, ["samples", "correct", str(settings.store.content_root)])
        assert corrected.exit_code == 0 and "DOC-014" in corrected.output
        second = run_action.run(settings)
        third = run_action.run(settings)
    assert first.counts["fed"] == 9 and first.counts["failed"] == 0
    assert (second.counts["fed"], second.counts["withdrawn_from_dmp"], second.counts["failed"]) == (3, 1, 0)
    assert third.counts["fed"] == third.counts["withdrawn_from_dmp"] == 0  # nothing is sent twice

    # The DMP: exactly the expected entries, nothing twice, nothing refused.
    oid_root = settings.structure.oid_root
    by_set = {ids.document_set_id(oid_root, d) + "^": d for d in samples.expected_entries_after_corrections()}
    sb = SandboxState(state)
    try:
        rows = sb.query("SELECT set_id, version, status, confidentiality FROM documents WHERE is_signature = 0 ORDER BY id")
    finally:
        sb.close()
    found, codes = {}, {}
    for r in rows:
        found.setdefault(by_set[r["set_id"]], []).append((int(r["version"]), r["status"].rsplit(":", 1)[-1]))
        codes.setdefault(by_set[r["set_id"]], []).append(r["confidentiality"])
    assert found == samples.expected_entries_after_corrections()
    assert codes["DOC-002"] == ["N", "N,MASQUE_PS"]
    assert codes["DOC-015"] == ["N,MASQUE_PS,INVISIBLE_PATIENT,INVISIBLE_REPRESENTANTS_LEGAUX",
                                "N,MASQUE_PS,INVISIBLE_REPRESENTANTS_LEGAUX"]
    received = report.report(state)
    assert (received["replacements"], received["withdrawals"], received["rejected"]) == (3, 1, 0)
    assert received["duplicate_deliveries"] == 0 and received["same_document_other_uid"] == []

    # `status`: the ledger's view of the DMP, and the runs that got it there.
    status = json.loads(cli("status", "--format", "json").output)
    assert status["dmp_entries"] == {"Approved": 8, "Deprecated": 1, "Deleted": 1}  # versions: DOC-001 has two
    assert {"state": "FED", "reason": "WITHDRAWN", "count": 1} in status["documents_by_reason"]
    runs = {r["id"]: r["counts"] for r in status["last_runs"]}
    assert runs[second.run_id]["fed"] == 3 and runs[second.run_id]["withdrawn_from_dmp"] == 1
    text = cli("status").output
    assert "In the DMP" in text and "Deprecated  1" in text and "Deleted     1" in text

    # The audit export: each replacement says what it replaces; the withdrawal its reason; the lookups before them.
    exported = cli("audit", "export", "--format", "json").output
    audit = json.loads(exported[exported.index("["):])
    sent = [(r["action"], r["document_ids"], r["message"] or "") for r in audit if r["run_id"] == second.run_id]
    replaced = {ids_: m for action, ids_, m in sent if action == "ITI-41"}
    assert set(replaced) == {"DOC-001:2", "DOC-002:1", "DOC-015:1"}
    assert "DOC-001 v2 replaces the entry of v1" in replaced["DOC-001:2"]
    assert "DOC-002 v1 replaces the entry of v1" in replaced["DOC-002:1"]
    [withdrawal] = [m for action, ids_, m in sent if action == "ITI-57"]
    assert "CANCELLED" in withdrawal
    assert sum(action == "ITI-18" for action, _, _ in sent) >= 4  # each correction asked the registry first
