"""Loading a PKCS#12 once per process, and the checks an operator relies on before the night's run."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki_fixtures import auth_settings, sign_settings

from connector.config import CertificateSettings
from connector.trust import certs
from connector.trust.certs import CertificateError, check_credential, load_credential
from connector.trust.pki import issue_bad_p12

NOW = dt.datetime.now(dt.timezone.utc)


def _levels(findings):
    return {f.level for f in findings}


def _errors(findings):
    return [f.message for f in findings if f.level == "error"]


def _bad(pki, tmp_path, kind="sign", **kw):
    p12, pw = issue_bad_p12(pki, tmp_path / f"{kind}-bad.p12", kind, **kw)
    return load_credential(CertificateSettings(p12=p12, password_file=pw))


def test_credential_exposes_what_saml_tls_and_xades_need(sign_credential, pki):
    cred = sign_credential
    assert cred.subject_dn == "CN=0B0999999 ORG SIGN,OU=0B0999999,O=CH DE TEST,C=FR"
    assert cred.issuer_dn == "CN=TEST AC IGC-SANTE ORGANISATIONS,OU=TEST,O=TEST IGC-SANTE,C=FR"
    assert cred.finess_ej() == "0B0999999"
    assert x509.load_der_x509_certificate(cred.certificate_der).serial_number == cred.serial_number
    chain = x509.load_pem_x509_certificates(cred.pem_chain())
    assert chain[0] == cred.certificate and chain[1] == x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    pem = cred.encrypted_key_pem(b"s3cret")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    key = serialization.load_pem_private_key(pem, b"s3cret")
    assert key.public_key().public_numbers() == cred.certificate.public_key().public_numbers()


def test_each_p12_is_decrypted_once_per_process(pki, monkeypatch):
    certs.clear_cache()
    calls = []
    real = certs.pkcs12.load_key_and_certificates
    monkeypatch.setattr(certs.pkcs12, "load_key_and_certificates", lambda *a: calls.append(1) or real(*a))
    first = load_credential(sign_settings(pki))
    assert load_credential(sign_settings(pki)) is first
    assert len(calls) == 1
    assert load_credential(auth_settings(pki)) is not first  # another file, another entry
    assert len(calls) == 2


def test_a_replaced_p12_is_reloaded(pki, tmp_path):
    p12, pw = issue_bad_p12(pki, tmp_path / "renewed.p12", "sign")
    settings = CertificateSettings(p12=p12, password_file=pw)
    before = load_credential(settings)
    stat = p12.stat()
    os.utime(p12, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_credential(settings) is not before


def test_good_credentials_pass_every_check(sign_credential, auth_credential, pki):
    for cred, purpose in ((sign_credential, "sign"), (auth_credential, "auth_cli")):
        findings = check_credential(cred, purpose, ca_bundle=pki.ca_cert)
        assert _levels(findings) == {"ok"}, findings
        assert any("chains to" in f.message for f in findings)


def test_expired_certificate_is_an_error(pki, tmp_path):
    cred = _bad(pki, tmp_path, not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1))
    assert any("expired" in m for m in _errors(check_credential(cred, "sign")))


def test_not_yet_valid_certificate_is_an_error(pki, tmp_path):
    cred = _bad(pki, tmp_path, not_before=NOW + dt.timedelta(days=2), not_after=NOW + dt.timedelta(days=400))
    assert any("not yet valid" in m for m in _errors(check_credential(cred, "sign")))


def test_certificate_expiring_within_30_days_is_a_warning(pki, tmp_path):
    cred = _bad(pki, tmp_path, "auth_cli", not_after=NOW + dt.timedelta(days=10, hours=1))
    findings = check_credential(cred, "auth_cli", ca_bundle=pki.ca_cert)
    warnings = [f.message for f in findings if f.level == "warning"]
    assert not _errors(findings)
    assert len(warnings) == 1 and "expires in 10 days" in warnings[0]


def test_check_at_a_given_time(sign_credential):
    later = sign_credential.certificate.not_valid_after_utc + dt.timedelta(days=1)
    assert any("expired" in m for m in _errors(check_credential(sign_credential, "sign", now=later)))


@pytest.mark.parametrize("purpose", ["auth_cli", "sign"])
def test_wrong_key_usage_is_an_error(pki, tmp_path, purpose):
    cred = _bad(pki, tmp_path, purpose, wrong_key_usage=True)
    errors = _errors(check_credential(cred, purpose))
    assert any("digitalSignature" in m for m in errors)
    if purpose == "auth_cli":
        assert any("clientAuth" in m for m in errors)


def test_sign_certificate_in_the_auth_cli_slot_is_an_error(sign_credential):
    assert any("clientAuth" in m for m in _errors(check_credential(sign_credential, "auth_cli")))


def test_auth_cli_certificate_in_the_sign_slot_is_flagged(auth_credential):
    warnings = [f.message for f in check_credential(auth_credential, "sign") if f.level == "warning"]
    assert any("nonRepudiation" in m for m in warnings) and any("AUTH_CLI" in m for m in warnings)


def test_certificate_from_another_ca_does_not_chain(pki, tmp_path):
    cred = _bad(pki, tmp_path, other_ca=True)
    assert _levels(check_credential(cred, "sign")) == {"ok"}  # nothing wrong but the issuer
    errors = _errors(check_credential(cred, "sign", ca_bundle=pki.ca_cert))
    assert len(errors) == 1 and "does not chain" in errors[0] and "NOT IGC-SANTE" in errors[0]


def test_wrong_password_names_the_file_not_the_password(pki, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    with pytest.raises(CertificateError) as exc:
        load_credential(CertificateSettings(p12=pki.sign_p12, password_file=wrong))
    message = str(exc.value)
    assert str(pki.sign_p12) in message and "wrong password" in message
    assert "not-the-password" not in message
    assert pki.sign_password_file.read_text().strip() not in message


def test_unreadable_files_raise_certificate_error(pki, tmp_path):
    not_p12 = tmp_path / "cert.p12"
    not_p12.write_bytes(pki.ca_cert.read_bytes())
    with pytest.raises(CertificateError, match="not a PKCS#12"):
        load_credential(CertificateSettings(p12=not_p12, password_file=pki.sign_password_file))
    with pytest.raises(CertificateError, match="cannot read"):
        load_credential(CertificateSettings(p12=tmp_path / "missing.p12", password_file=pki.sign_password_file))
    with pytest.raises(CertificateError, match="password"):
        load_credential(CertificateSettings(p12=pki.sign_p12, password_file=tmp_path / "missing.password"))
