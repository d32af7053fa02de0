"""`demo`: the whole job on the embedded default, in one folder: test PKI, sample store, configuration,
sandbox DMP on 127.0.0.1, a real `run` over mutual TLS, the run summary and the status.

What already exists in the folder is kept (PKI, store, ledger, sandbox state), so a second demo feeds
nothing new: the ledger knows what was fed and the sandbox remembers what it received.
"""

from __future__ import annotations

from pathlib import Path

from connector import config, samples
from connector.sandbox import server as sandbox
from connector.trust import pki as test_pki

SITES = (
    ("0B0999998", "Centre Hospitalier de Test - site principal", "SA01"),
    ("0B0999997", "Centre Hospitalier de Test - site annexe", "SA01"),
)


def prepare_folder(directory: Path, base_url: str) -> Path:
    """Create what is missing in `directory` and (re)write its configuration for `base_url`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki_dir = directory / "pki"
    if not (pki_dir / "ca.pem").is_file():
        test_pki.create_test_pki(pki_dir)
    store_dir = directory / "store"
    if not (store_dir / "store.sqlite3").is_file():
        samples.create_sample_store(store_dir)
    path = directory / "dmp-connector.toml"
    path.write_text(config_text(base_url), encoding="utf-8")
    return path


def config_text(base_url: str) -> str:
    sites = "".join(
        f'\n[[structure.sites]]\nfiness_geo = "{f}"\nname = "{n}"\nhealthcare_facility_type = "{t}"\n'
        f'practice_setting = "ETABLISSEMENT"\n'
        for f, n, t in SITES
    )
    return f"""# Written by `dmp-connector demo`: the sample store against the sandbox DMP (test PKI, test INS).
state_dir = "state"

[structure]
finess_ej = "0B0999999"
oid_root = "1.2.250.1.999.42"
name = "Centre Hospitalier de Test"
{sites}
[store]
url = "sqlite:///store/store.sqlite3"
content_root = "store"

[dmp]
base_url = "{base_url}"
ca_bundle = "pki/ca.pem"
environment = "test"

[dmp.retry]
in_run_wait_initial = 0.2
in_run_wait_max = 2.0

[certificates.auth_cli]
p12 = "pki/auth_cli.p12"
password_file = "pki/auth_cli.password"

[certificates.sign]
p12 = "pki/sign.p12"
password_file = "pki/sign.password"

[vihf]
responsible_rpps = "10001234567"
responsible_specialty = "G15_10/SM26"
lps_id_homologation_dmp = "DEMO-HOMOLOGATION"
"""


def demo(directory: Path, echo=print) -> int:
    from connector.actions import run as run_action
    from connector.actions import status as status_action
    from connector.actions.context import open_settings_ledger

    directory = directory.resolve()
    prepare_folder(directory, "https://127.0.0.1:1/si-dmp-server/v2/services")  # PKI first: the sandbox needs it
    server = sandbox.serve(pki_dir=directory / "pki", state_path=directory / "sandbox.sqlite3").start()
    try:
        echo(f"sandbox DMP listening on {server.url}")
        settings = config.load(prepare_folder(directory, server.url))
        summary = run_action.run(settings)
        echo(summary.text())
        echo("")
        echo(status_action.render(status_action.collect(open_settings_ledger(settings))))
        echo("")
        echo(f"configuration: {directory / 'dmp-connector.toml'} "
             f"(e.g. dmp-connector status --config {directory / 'dmp-connector.toml'})")
    finally:
        server.stop()
    return summary.run_id
