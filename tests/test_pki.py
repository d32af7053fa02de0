"""The test PKI: IGC-Santé shapes, a real chain, usable by TLS, and no private key in clear on disk."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connector.trust.certs import verify_chain


def _p12(path, password_file):
    return pkcs12.load_key_and_certificates(path.read_bytes(), password_file.read_bytes().strip())


def _ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls).value


def test_every_certificate_chains_to_the_test_ca(pki):
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert _ext(ca, x509.BasicConstraints).ca
    server = x509.load_pem_x509_certificates(pki.server_cert.read_bytes())
    assert verify_chain(server[0], server[1:], [ca])[-1] == ca
    for p12, pw in ((pki.auth_cli_p12, pki.auth_cli_password_file), (pki.sign_p12, pki.sign_password_file)):
        _, cert, extra = _p12(p12, pw)
        assert verify_chain(cert, extra, [ca]) == [cert, ca]
    assert pki.client_ca == pki.ca_cert


def test_org_certificates_have_igc_sante_subjects_and_usages(pki):
    _, auth, _ = _p12(pki.auth_cli_p12, pki.auth_cli_password_file)
    _, sign, _ = _p12(pki.sign_p12, pki.sign_password_file)
    for cert, label in ((auth, "ORG AUTH_CLI"), (sign, "ORG SIGN")):
        subject = cert.subject
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "CH DE TEST"
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "0B0999999"
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"0B0999999 {label}"
        assert cert.public_key().key_size == 2048

    ku = _ext(auth, x509.KeyUsage)
    assert ku.digital_signature and ku.key_encipherment and not ku.content_commitment
    assert list(_ext(auth, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    ku = _ext(sign, x509.KeyUsage)
    assert ku.digital_signature and ku.content_commitment
    with pytest.raises(x509.ExtensionNotFound):
        _ext(sign, x509.ExtendedKeyUsage)


def test_server_certificate_names_localhost_and_loopback(pki):
    cert = x509.load_pem_x509_certificates(pki.server_cert.read_bytes())[0]
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _ext(cert, x509.ExtendedKeyUsage)


def test_server_key_is_encrypted_and_loads_in_an_ssl_context(pki):
    password = pki.server_password_file.read_bytes().strip()
    with pytest.raises(TypeError):  # encrypted: refuses to load without its password
        serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key, password=password)
    context.load_verify_locations(pki.client_ca)


def test_no_private_key_in_clear_on_disk(pki):
    for path in pki.directory.iterdir():
        data = path.read_bytes()
        assert b"BEGIN PRIVATE KEY" not in data, path
        assert b"BEGIN RSA PRIVATE KEY" not in data, path
    for p12 in (pki.auth_cli_p12, pki.sign_p12):
        with pytest.raises(ValueError):
            pkcs12.load_key_and_certificates(p12.read_bytes(), None)


def test_secrets_are_readable_by_their_owner_only(pki):
    for path in (pki.ca_password_file, pki.server_password_file, pki.auth_cli_password_file,
                 pki.sign_password_file, pki.server_key, pki.ca_key, pki.sign_p12, pki.auth_cli_p12):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = {p.read_bytes() for p in pki.directory.glob("*.password")}
    assert len(passwords) == 4 and all(len(p.strip()) >= 24 for p in passwords)
