"""End to end over real mutual TLS: the sample store fed to the sandbox DMP by a real `run`."""

import sqlalchemy as sa
from click.testing import CliRunner

from connector import config, samples
from connector.actions import demo, run as run_action
from connector.cli import main
from connector.sandbox import report, server


def _folder(tmp_path, url="https://127.0.0.1:1/si-dmp-server/v2/services"):
    return demo.prepare_folder(tmp_path, url)


def test_samples_fed_once_each_and_skips_recorded(tmp_path):
    _folder(tmp_path)
    expected = samples.expected_decisions()
    eligible = {k for k, reason in expected.items() if reason is None}
    with server.serve(pki_dir=tmp_path / "pki", state_path=tmp_path / "sandbox.sqlite3") as sandbox:
        settings = config.load(_folder(tmp_path, sandbox.url))
        first = run_action.run(settings)
        second = run_action.run(settings)
    assert first.counts["fed"] == len(eligible) and first.counts["failed"] == 0
    assert second.counts["fed"] == 0 and second.skipped["ALREADY_FED"] == len(eligible)

    received = report.report(tmp_path / "sandbox.sqlite3")
    assert received["documents"] == len(eligible) == received["distinct_documents"]
    assert received["duplicate_deliveries"] == 0 and received["rejected"] == 0

    store = sa.create_engine(settings.store.url)
    with store.connect() as conn:
        fed = {(r.document_id, r.version): r for r in conn.execute(sa.text("SELECT * FROM dmp_feed_status"))}
    assert set(fed) == eligible
    assert all(r.status == "FED" and r.dmp_unique_id and r.fed_at for r in fed.values())

    result = CliRunner().invoke(main, ["status", "--format", "json", "--config", str(tmp_path / "dmp-connector.toml")])
    import json

    status = json.loads(result.output)
    assert status["documents_by_state"]["FED"] == len(eligible)
    skipped = {r["reason"]: r["count"] for r in status["documents_by_reason"] if r["state"] == "SKIPPED"}
    want = {}
    for reason in expected.values():
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert skipped == want
