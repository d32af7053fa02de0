"""The structure's certificates: load a PKCS#12 once per process, check it is fit for its purpose.

IGC-Santé "personne morale" certificates come in pairs: ORG AUTH_CLI (mutual TLS, EKU clientAuth) and
ORG SIGN (VIHF and submission-set signatures, keyUsage nonRepudiation). The structure's FINESS EJ is read
from the subject's OU (the test PKI puts it there; "1"+FINESS is accepted too) or the first word of the CN.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connector.config import CertificateSettings, ConfigError
from connector.errors import CertificateError

Purpose = Literal["auth_cli", "sign"]
EXPIRY_WARNING = dt.timedelta(days=30)
_FINESS = re.compile(r"^1?([0-9][0-9AB][0-9]{7})$")


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warning", "error"]
    message: str


@dataclass(frozen=True, eq=False)
class Credential:
    """A certificate with its private key (decrypted in memory only) and the chain shipped in the p12."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]
    source: Path

    @functools.cached_property  # the VIHF Issuer of every request
    def subject_dn(self) -> str:
        """RFC 4514 string (most specific first: CN=…,OU=…,O=…,C=FR), as SAML X509SubjectName expects."""
        return self.certificate.subject.rfc4514_string()

    @property
    def issuer_dn(self) -> str:
        return self.certificate.issuer.rfc4514_string()

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def pem_chain(self) -> bytes:
        """The certificate followed by the chain, PEM (for TLS `load_cert_chain`)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain))

    def encrypted_key_pem(self, password: bytes) -> bytes:
        """The private key as encrypted PKCS#8 PEM: the only form in which it may touch a disk."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )

    def finess_ej(self) -> str | None:
        return finess_from_name(self.certificate.subject)


def finess_from_name(name: x509.Name) -> str | None:
    for attr in name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        if m := _FINESS.match(str(attr.value)):
            return m.group(1)
    for attr in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        words = str(attr.value).replace("/", " ").split()
        if words and (m := _FINESS.match(words[0])):
            return m.group(1)
    return None


# --- loading, once per process ---------------------------------------------------------------

# Keyed by both files and their mtimes: a renewed p12 or a changed password file is loaded afresh.
_cache: dict[tuple[Path, int, Path, int | None], Credential] = {}
_cache_lock = threading.Lock()


def load_credential(settings: CertificateSettings) -> Credential:
    """The credential of a PKCS#12 file, decrypted once per process and per file version (mtime)."""
    p12 = settings.p12.resolve()
    try:
        key = (p12, p12.stat().st_mtime_ns, settings.password_file.resolve(), _mtime(settings.password_file))
    except OSError as exc:
        unset = (" (a variable in the path is not set: under systemd, LoadCredential= sets $CREDENTIALS_DIRECTORY;"
                 " run what needs the certificates as the service, e.g. `systemctl start dmp-connector-run`)"
                 if "$" in str(settings.p12) else "")
        raise CertificateError(f"{settings.p12}: cannot read the PKCS#12 file ({exc.strerror}){unset}") from None
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = _load(settings, p12)
        return cached


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None  # reported by _load with the file's name


def _load(settings: CertificateSettings, p12: Path) -> Credential:
    try:
        password = settings.password()
    except ConfigError as exc:
        raise CertificateError(f"{settings.p12}: cannot read its password: {exc}") from None
    try:
        data = p12.read_bytes()
    except OSError as exc:
        unset = (" (a variable in the path is not set: under systemd, LoadCredential= sets $CREDENTIALS_DIRECTORY;"
                 " run what needs the certificates as the service, e.g. `systemctl start dmp-connector-run`)"
                 if "$" in str(settings.p12) else "")
        raise CertificateError(f"{settings.p12}: cannot read the PKCS#12 file ({exc.strerror}){unset}") from None
    if not data.startswith(b"\x30"):
        raise CertificateError(f"{settings.p12}: not a PKCS#12 (DER) file")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        raise CertificateError(
            f"{settings.p12}: wrong password (from {settings.password_file}) or damaged PKCS#12 file"
        ) from None
    if cert is None or key is None:
        raise CertificateError(f"{settings.p12}: the PKCS#12 must hold one certificate and its private key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(f"{settings.p12}: the private key is not an RSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CertificateError(f"{settings.p12}: the private key does not match the certificate")
    return Credential(certificate=cert, private_key=key, chain=tuple(extra or ()), source=settings.p12)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- checks ----------------------------------------------------------------------------------


class ChainError(Exception):
    """The certificate does not chain to a trusted CA."""


def verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate] | tuple[x509.Certificate, ...],
    trusted: list[x509.Certificate],
    *,
    at: dt.datetime | None = None,
) -> list[x509.Certificate]:
    """Walk from `leaf` to a certificate of `trusted` by issuer name and signature; returns the path.

    Deliberately simpler than a web-PKI validator: IGC-Santé certificates are not web certificates.
    Checks each signature, each validity window (at `at`) and that every issuer is a CA.
    """
    at = at or dt.datetime.now(dt.timezone.utc)
    pool = list(intermediates) + list(trusted)
    trusted_der = {c.public_bytes(serialization.Encoding.DER) for c in trusted}
    path, current = [leaf], leaf
    for _ in range(8):
        _check_window(current, at)
        if current.public_bytes(serialization.Encoding.DER) in trusted_der:
            return path
        issuer = _find_issuer(current, pool)
        if issuer is None:
            raise ChainError(f"no trusted issuer found for {current.subject.rfc4514_string()} "
                             f"(issuer {current.issuer.rfc4514_string()})")
        if not _is_ca(issuer):
            raise ChainError(f"issuer {issuer.subject.rfc4514_string()} is not a CA certificate")
        path.append(issuer)
        current = issuer
    raise ChainError("certificate chain too long")


def _find_issuer(cert: x509.Certificate, pool: list[x509.Certificate]) -> x509.Certificate | None:
    for candidate in pool:
        if candidate.subject != cert.issuer or candidate is cert:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_window(cert: x509.Certificate, at: dt.datetime) -> None:
    name = cert.subject.rfc4514_string()
    if at < cert.not_valid_before_utc:
        raise ChainError(f"{name} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if at > cert.not_valid_after_utc:
        raise ChainError(f"{name} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def load_pem_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the CA bundle ({exc.strerror})") from None
    except ValueError:
        raise CertificateError(f"{path}: not a PEM certificate bundle") from None


def check_credential(
    cred: Credential, purpose: Purpose, *, now: dt.datetime | None = None, ca_bundle: Path | None = None
) -> list[Finding]:
    """Everything an operator should know about a credential before the night's run."""
    if purpose not in ("auth_cli", "sign"):
        raise ValueError(f"unknown certificate purpose {purpose!r}")
    now = now or dt.datetime.now(dt.timezone.utc)
    cert = cred.certificate
    label = f"{purpose} certificate {cred.subject_dn}"
    findings = [_validity(cert, now, label)]
    findings += _usage(cert, purpose, label)
    if cred.private_key.key_size < 2048:
        findings.append(Finding("error", f"{label}: RSA key of {cred.private_key.key_size} bits (2048 minimum)"))
    if cred.finess_ej() is None:
        findings.append(Finding("warning", f"{label}: no FINESS found in the subject (OU or CN)"))
    if ca_bundle is not None:
        try:
            path = verify_chain(cert, cred.chain, load_pem_bundle(ca_bundle), at=now)
            findings.append(Finding("ok", f"{label}: chains to {path[-1].subject.rfc4514_string()}"))
        except ChainError as exc:
            findings.append(Finding("error", f"{label}: does not chain to {ca_bundle}: {exc}"))
    return findings


def _validity(cert: x509.Certificate, now: dt.datetime, label: str) -> Finding:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return Finding("error", f"{label}: not yet valid (valid from {start:%Y-%m-%d %H:%M} UTC)")
    if now > end:
        return Finding("error", f"{label}: expired on {end:%Y-%m-%d %H:%M} UTC")
    if end - now < EXPIRY_WARNING:
        return Finding("warning", f"{label}: expires in {(end - now).days} days ({end:%Y-%m-%d} UTC): renew it")
    return Finding("ok", f"{label}: valid until {end:%Y-%m-%d} UTC")


def _usage(cert: x509.Certificate, purpose: Purpose, label: str) -> list[Finding]:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = None
    found: list[Finding] = []
    if ku is None or not ku.digital_signature:
        found.append(Finding("error", f"{label}: keyUsage lacks digitalSignature"))
    if purpose == "auth_cli":
        if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:  # IGC-Santé AUTH_CLI always has it
            found.append(Finding("error", f"{label}: extendedKeyUsage lacks clientAuth (TLS client)"))
    else:
        if ku is not None and not ku.content_commitment:
            found.append(Finding("warning", f"{label}: keyUsage lacks nonRepudiation (an ORG SIGN has it)"))
        if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH in eku:
            found.append(Finding("warning", f"{label}: has clientAuth: is it the AUTH_CLI certificate?"))
    if not any(f.level == "error" for f in found):
        found.append(Finding("ok", f"{label}: key usage fits {purpose}"))
    return found


def certificate_digest(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(cert.public_bytes(serialization.Encoding.DER))
    return h.finalize()


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
