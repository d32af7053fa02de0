"""Configuration: the example loads, every error names its key."""

from pathlib import Path

import pytest

from connector import config
from conftest import settings_dict

ROOT = Path(__file__).resolve().parent.parent


def _example_dir(tmp_path):
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "auth_cli.p12", "auth_cli.password", "sign.p12", "sign.password"):  # as `sandbox pki` names them
        (tmp_path / "pki" / name).write_bytes(b"x")
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_with_every_key(tmp_path):
    s = config.load(_example_dir(tmp_path))
    assert s.structure.finess_ej == "0B0999999"
    assert [x.finess_geo for x in s.structure.sites] == ["0B0999998", "0B0999997"]
    assert s.dmp.repository_url.endswith("/si-dmp-server/v2/services/repository")
    assert s.dmp.registry_url.endswith("/registry")
    assert s.store.url == f"sqlite:///{tmp_path / 'store.sqlite3'}"
    assert s.certificates.sign.p12 == tmp_path / "pki" / "sign.p12"
    assert s.signature.digest == "sha1" and s.vihf.version == "3.0"
    assert s.submission.default_activity == "97" and s.submission.class_code_fallback is None


def test_ledger_defaults_to_sqlite_in_state_dir(tmp_path):
    data = settings_dict(tmp_path)
    del data["ledger"]
    s = config.from_dict(data, base=tmp_path)
    assert s.ledger.url == f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite3'}"


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["structure"].pop("finess_ej"), "structure.finess_ej: missing"),
        (lambda d: d["structure"].update(finess_ej="12345"), "structure.finess_ej"),
        (lambda d: d["structure"].update(oid_root="1.2.abc"), "structure.oid_root"),
        (lambda d: d["structure"]["sites"][1].update(finess_geo="0B0999998"), "configured twice"),
        (lambda d: d["structure"]["sites"][0].update(healthcare_facility_type="01"), "structure.sites[0].healthcare_facility_type"),
        (lambda d: d["structure"].update(sites=[]), "structure.sites"),
        (lambda d: d["dmp"].update(base_url="http://insecure"), "dmp.base_url"),
        (lambda d: d["dmp"].update(base_url="https://"), "dmp.base_url: no host"),
        (lambda d: d["dmp"].update(base_url="https://dmp.example:port/x"), "dmp.base_url"),
        (lambda d: d.update(schedule={"cron": "0 2 * *"}), "schedule.cron"),
        (lambda d: d.update(schedule={"cron": "every night"}), "schedule.cron"),
        (lambda d: d.update(schedule={"timezone": "Europe/Pariss"}), "schedule.timezone"),
        (lambda d: d["ledger"].update(url="mysql://u@h/ledger"), "ledger.url"),
        (lambda d: d["dmp"].update(environment="prod"), "dmp.environment"),
        (lambda d: d["dmp"].update(max_in_flight=0), "dmp.max_in_flight"),
        (lambda d: d["store"].update(url="not a url"), "store.url"),
        (lambda d: d["store"].update(write_back="yes"), "store.write_back"),
        (lambda d: d.update(certificates={"auth_cli": {"p12": "missing.p12", "password_file": "x"}}), "certificates.auth_cli.p12"),
        (lambda d: d["dmp"].update(bse_url="typo"), "dmp.bse_url: unknown key"),
        (lambda d: d.update(signature={"digest": "md5"}), "signature.digest"),
        (lambda d: d.update(vihf={"responsible_rpps": "123"}), "vihf.responsible_rpps"),
        (lambda d: d.update(submission={"default_activity": "X"}), "submission.default_activity: 'X' is neither"),
        (lambda d: d.update(submission={"default_activity": "11"}), "submission.default_activity: '11' is a JDV_J59"),
        (lambda d: d.update(submission={"class_code_fallback": "99"}), "submission.class_code_fallback: '99' is not"),
        (lambda d: d.update(submission={"class_code": "10"}), "submission.class_code: no longer a setting: classCode"),
        (lambda d: d.update(submission={"content_type_code": "04"}), "submission.content_type_code: no longer a setting"),
    ],
)
def test_errors_name_the_key(tmp_path, mutate, key):
    data = settings_dict(tmp_path)
    mutate(data)
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data, base=tmp_path)
    assert key in str(err.value)


def test_malformed_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[structure\nfiness_ej = 1", encoding="utf-8")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(config.ConfigError, match="DMP_CONNECTOR_CONFIG"):
        config.load(None)


def test_password_is_read_from_its_file(tmp_path):
    (tmp_path / "p").write_bytes(b"s3cret\n")
    c = config.CertificateSettings(p12=tmp_path / "x.p12", password_file=tmp_path / "p")
    assert c.password() == b"s3cret"
    assert "s3cret" not in repr(c)


@pytest.mark.parametrize("key, value", [
    ("dmp.read_timeout", 0), ("dmp.read_timeout", float("nan")), ("dmp.read_timeout", float("inf")),
    ("dmp.connect_timeout", 0.0), ("dmp.request_deadline", 0), ("dmp.request_deadline", float("inf")),
    ("dmp.retry.lifetime_days", float("nan")), ("dmp.retry.lifetime_days", 0), ("ledger.lease_minutes", 0),
    ("dmp.retry.deferred_min_minutes", float("nan")), ("dmp.retry.in_run_wait_max", float("inf")),
    ("dmp.max_reply_bytes", 0),
])
def test_durations_are_finite_and_timeouts_positive(tmp_path, key, value):
    """A timeout of 0, nan or inf, a lifetime of nan: every send failed inside its thread, documents stranded."""
    data = settings_dict(tmp_path)
    *path, name = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[name] = value
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.") + ": must be"):
        config.from_dict(data, base=tmp_path)


def test_zero_delays_stay_allowed(tmp_path):
    data = settings_dict(tmp_path)
    data["dmp"]["retry"] = {"deferred_min_minutes": 0, "deferred_max_minutes": 0, "in_run_wait_initial": 0}
    assert config.from_dict(data, base=tmp_path).dmp.retry.deferred_min_minutes == 0


def test_the_cli_finds_the_configuration_before_or_after_the_command_env_or_installed(tmp_path, monkeypatch):
    """`--config` before or after the subcommand, else $DMP_CONNECTOR_CONFIG, else the installed file; `status`
    does not read the certificates (their `${CREDENTIALS_DIRECTORY}` paths outside the service), `run` says why
    it cannot."""
    from click.testing import CliRunner

    from connector.cli import main
    from connector.ledger.repo import open_ledger

    import delivery_harness as h
    from connector import samples

    samples.create_sample_store(tmp_path / "store")
    cfg = h.write_config(tmp_path / "installed.toml", dmp={"ca_bundle": None}, **{
        f"certificates.{name}": {"p12": f"${{CREDENTIALS_DIRECTORY}}/{name}.p12",
                                 "password_file": f"${{CREDENTIALS_DIRECTORY}}/{name}.pass"} for name in ("auth_cli", "sign")})
    ledger_url = config.load(cfg).ledger.url
    open_ledger(ledger_url)  # the service's ledger exists
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    runner = CliRunner()
    monkeypatch.setattr(config, "INSTALLED_PATH", tmp_path / "absent.toml")
    none = runner.invoke(main, ["status"])
    assert none.exit_code == 3 and "no configuration given" in none.output
    for argv in (["--config", str(cfg), "status"], ["status", "--config", str(cfg)]):
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, (argv, result.output)
        assert f"Ledger: {ledger_url}" in result.output
    assert runner.invoke(main, ["status"], env={config.ENV_VAR: str(cfg)}).exit_code == 0
    monkeypatch.setattr(config, "INSTALLED_PATH", cfg)
    assert runner.invoke(main, ["status", "-h"]).exit_code == 0
    assert runner.invoke(main, ["status"]).exit_code == 0
    run = runner.invoke(main, ["run"])
    assert run.exit_code == 6 and "a variable in the path is not set" in run.output
    assert "systemctl start dmp-connector-run" in run.output


def test_the_example_configuration_runs_on_what_sandbox_pki_writes(tmp_path):
    """config.example.toml's certificate files are named as `dmp-connector sandbox pki pki` writes them."""
    from connector.trust.pki import create_test_pki

    files = create_test_pki(tmp_path / "pki")
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.example.toml").read_text(encoding="utf-8"), encoding="utf-8")
    s = config.load(path)
    assert (s.certificates.auth_cli.p12, s.certificates.auth_cli.password_file) == (files.auth_cli_p12,
                                                                                     files.auth_cli_password_file)
    assert (s.certificates.sign.p12, s.certificates.sign.password_file) == (files.sign_p12, files.sign_password_file)
    assert s.dmp.ca_bundle == files.ca_cert
