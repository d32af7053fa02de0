"""Issue 17: a replacement targets the entry as the registry holds it (not the id the ledger minted), and a refused
correction, once the cause is fixed, is sent again by `replay` with what was journaled."""

import sqlalchemy as sa
from click.testing import CliRunner

from connector.actions import run as run_action
from connector.cli import main
from connector.sandbox import report
from connector.sandbox.state import SandboxState
from test_corrections_e2e import DOC_SET, dmp, entries, ledger_row, lifecycle, new_version  # noqa: F401 (fixture)

OTHER_ENTRY = "urn:uuid:0f0f0f0f-1111-4222-8333-444455556666"


def _sandbox_sql(state, sql, *params):
    sandbox = SandboxState(state)
    try:
        with sandbox._transaction() as db:
            db.execute(sql, params)
    finally:
        sandbox.close()


def test_the_rplc_targets_the_registry_entry_uuid_not_the_minted_one(dmp):
    settings, state = dmp
    run_action.run(settings)
    [(_, _, minted, _, _)] = entries(state, settings, "DOC-001")
    # The registry registered the entry under an entryUUID of its own (a registry may assign them).
    _sandbox_sql(state, "UPDATE documents SET entry_uuid = ? WHERE entry_uuid = ?", OTHER_ENTRY, minted)
    new_version(settings, "DOC-001", 2)
    assert run_action.run(settings).counts["fed"] == 1
    [change] = lifecycle(state)
    assert (change["kind"], change["target"]) == ("replacement", OTHER_ENTRY)
    assert [e[1] for e in entries(state, settings, "DOC-001")] == ["Deprecated", "Approved"]


def test_a_refused_replacement_is_replayed_once_the_registry_holds_the_entry_again(dmp, tmp_path):
    settings, state = dmp
    run_action.run(settings)
    [(_, _, entry, _, _)] = entries(state, settings, "DOC-001")
    _sandbox_sql(state, "UPDATE documents SET status = ? WHERE entry_uuid = ?", DOC_SET + "Deprecated", entry)
    new_version(settings, "DOC-001", 2)
    assert run_action.run(settings).counts["failed"] == 1
    assert ledger_row(settings, "DOC-001", 2)["state"] == "FAILED"

    _sandbox_sql(state, "UPDATE documents SET status = ? WHERE entry_uuid = ?", DOC_SET + "Approved", entry)
    result = CliRunner().invoke(main, ["replay", "--document", "DOC-001", "--config", str(tmp_path / "dmp-connector.toml")])
    assert result.exit_code == 0, result.output
    assert "DOC-001 v2: FED" in result.output
    assert [e[1] for e in entries(state, settings, "DOC-001")] == ["Deprecated", "Approved"]
    assert ledger_row(settings, "DOC-001", 1)["dmp_status"] == "Deprecated"
    assert report.report(state)["replacements"] == 1


def test_a_held_document_gets_no_correction(dmp, tmp_path):
    settings, state = dmp
    run_action.run(settings)
    cfg = str(tmp_path / "dmp-connector.toml")
    assert CliRunner().invoke(main, ["hold", "DOC-014", "--config", cfg]).exit_code == 0
    with sa.create_engine(settings.store.url).begin() as conn:
        conn.execute(sa.text("UPDATE dmp_document SET status = 'CANCELLED' WHERE document_id = 'DOC-014'"))
    held = run_action.run(settings)
    assert held.counts["withdrawn_from_dmp"] == 0 and held.skipped["HELD"] == 1
    assert CliRunner().invoke(main, ["release", "DOC-014", "--config", cfg]).exit_code == 0
    assert run_action.run(settings).counts["withdrawn_from_dmp"] == 1
    assert [e[1] for e in entries(state, settings, "DOC-014")] == ["Deleted"]
