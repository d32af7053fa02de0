"""A throwaway test PKI shaped like IGC-Santé, for the sandbox DMP, the demo and the tests.

One test root CA issues: the sandbox's TLS server certificate (localhost / 127.0.0.1) and the structure's
ORG AUTH_CLI and ORG SIGN certificates. Subjects of the ORG certificates:
    C=FR, O=<structure name>, OU=<FINESS EJ>, CN=<FINESS EJ> ORG AUTH_CLI | <FINESS EJ> ORG SIGN
(the FINESS EJ is in the OU, where `Credential.finess_ej()` looks first).
Every private key on disk is encrypted (PKCS#12 or encrypted PKCS#8 PEM) with a random password kept in a
0600 file beside it. RSA-2048, SHA-256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connector.trust.certs import write_secret

Kind = Literal["auth_cli", "sign"]


@dataclass(frozen=True)
class PkiFiles:
    directory: Path
    ca_cert: Path  # PEM, the test root CA (trust anchor for server and client certificates)
    ca_key: Path  # encrypted PEM, kept to issue more certificates (issue_bad_p12)
    ca_password_file: Path
    server_cert: Path  # PEM chain: server certificate then the CA
    server_key: Path  # encrypted PKCS#8 PEM
    server_password_file: Path
    auth_cli_p12: Path
    auth_cli_password_file: Path
    sign_p12: Path
    sign_password_file: Path
    finess_ej: str
    structure_name: str

    @property
    def client_ca(self) -> Path:
        """The CA bundle that issues client certificates (the same single test CA)."""
        return self.ca_cert


def create_test_pki(
    directory: Path, *, finess_ej: str = "0B0999999", structure_name: str = "CH DE TEST", valid_days: int = 365
) -> PkiFiles:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _now()
    not_after = now + dt.timedelta(days=valid_days)

    ca_key = _new_key()
    ca_name = _name(C="FR", O="TEST IGC-SANTE", OU="TEST", CN="TEST AC IGC-SANTE ORGANISATIONS")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, now - dt.timedelta(days=1), now + dt.timedelta(days=valid_days + 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True, digital_signature=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = dict(directory=directory, finess_ej=finess_ej, structure_name=structure_name)
    files["ca_cert"] = _write(directory / "ca.pem", _pem(ca_cert))
    files["ca_password_file"], ca_pw = _password_file(directory / "ca.password")
    files["ca_key"] = _write(directory / "ca.key.pem", _encrypted_pem(ca_key, ca_pw), secret=True)

    server_key = _new_key()
    server_cert = (
        _builder(_name(C="FR", O="TEST DMP", CN="localhost"), ca_name, server_key, now, not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files["server_cert"] = _write(directory / "server.pem", _pem(server_cert) + _pem(ca_cert))
    files["server_password_file"], server_pw = _password_file(directory / "server.password")
    files["server_key"] = _write(directory / "server.key.pem", _encrypted_pem(server_key, server_pw), secret=True)

    for kind in ("auth_cli", "sign"):
        key = _new_key()
        cert = _org_cert(kind, key, ca_key, ca_name, finess_ej, structure_name, now, not_after)
        files[f"{kind}_password_file"], pw = _password_file(directory / f"{kind}.password")
        files[f"{kind}_p12"] = _write(directory / f"{kind}.p12", _p12(kind, key, cert, [ca_cert], pw), secret=True)
    return PkiFiles(**files)


def issue_bad_p12(
    pki: PkiFiles,
    path: Path,
    kind: Kind,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    other_ca: bool = False,
    wrong_key_usage: bool = False,
) -> tuple[Path, Path]:
    """An ORG certificate with one thing wrong (dates, issuer, key usage), for the tests of the checks."""
    path = Path(path)
    now = _now()
    if other_ca:
        ca_key = _new_key()
        ca_name = _name(C="FR", O="OTHER CA", CN="NOT IGC-SANTE")
        ca_cert = (
            _builder(ca_name, ca_name, ca_key, now - dt.timedelta(days=1), now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
    else:
        ca_key = serialization.load_pem_private_key(
            pki.ca_key.read_bytes(), pki.ca_password_file.read_bytes().strip()
        )
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        ca_name = ca_cert.subject
    key = _new_key()
    cert = _org_cert(
        kind, key, ca_key, ca_name, pki.finess_ej, pki.structure_name,
        not_before or now - dt.timedelta(minutes=5), not_after or now + dt.timedelta(days=365),
        wrong_key_usage=wrong_key_usage,
    )
    password_file, pw = _password_file(path.with_suffix(".password"))
    _write(path, _p12(kind, key, cert, [ca_cert], pw), secret=True)
    return path, password_file


# --- helpers -----------------------------------------------------------------------------------


def _org_cert(kind, key, ca_key, ca_name, finess_ej, structure_name, not_before, not_after, wrong_key_usage=False):
    label = "ORG AUTH_CLI" if kind == "auth_cli" else "ORG SIGN"
    subject = _name(C="FR", O=structure_name, OU=finess_ej, CN=f"{finess_ej} {label}")
    builder = _builder(subject, ca_name, key, not_before, not_after).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    if wrong_key_usage:  # an encryption-only certificate: fit for neither purpose
        builder = builder.add_extension(_key_usage(key_encipherment=True), critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    elif kind == "auth_cli":
        builder = builder.add_extension(
            _key_usage(digital_signature=True, key_encipherment=True), critical=True
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    else:
        builder = builder.add_extension(_key_usage(digital_signature=True, content_commitment=True), critical=True)
    return builder.sign(ca_key, hashes.SHA256())


def _builder(subject, issuer, key, not_before, not_after) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(**flags) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def _name(**parts: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in parts.items()])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _encrypted_pem(key, password: bytes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
    )


def _p12(kind: str, key, cert, cas, password: bytes) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        kind.encode(), key, cert, cas, serialization.BestAvailableEncryption(password)
    )


def _password_file(path: Path) -> tuple[Path, bytes]:
    password = secrets.token_urlsafe(24).encode()
    write_secret(path, password + b"\n")
    return path, password


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    write_secret(path, data) if secret else path.write_bytes(data)
    return path
