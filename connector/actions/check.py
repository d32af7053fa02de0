"""`check`: is everything ready for tonight's run? One line per check, an action an operator can take.

Configuration (already loaded by the CLI), store and ledger databases with their tables, both certificates
(validity, expiry within 30 days, key usage, FINESS EJ, chain), and a mutual-TLS handshake with the DMP.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from connector.actions.context import open_settings_ledger, open_store
from connector.config import Settings
from connector.ledger.repo import LedgerError, LedgerMissing
from connector.store import StoreError


@dataclass(frozen=True)
class Check:
    level: str  # ok, warning, error
    name: str
    message: str


def run_checks(settings: Settings) -> list[Check]:
    checks = [Check("ok", "config", f"{settings.source or 'settings'}: valid, {len(settings.structure.sites)} site(s), "
                                    f"environment {settings.dmp.environment}")]
    if settings.validation.schematron != "every":
        checks.append(Check("warning", "config", f"validation.schematron = {settings.validation.schematron}: "
                                                 "not every CDA is checked against the ANS schematron"))
    if settings.validation.pdfa == "off":
        checks.append(Check("warning", "config", "validation.pdfa = off: PDF bodies are not checked for PDF/A"))
    checks.append(_terminologies(settings))
    checks.append(_homologation(settings))
    checks.append(_opens("store", open_store, settings, StoreError,
                         "reachable, dmp_patient and dmp_document have every column of the contract"))
    if checks[-1].level == "ok" and settings.store.write_back:
        checks.append(_write_access(settings))
    try:
        checks.append(_opens("ledger", open_settings_ledger, settings, LedgerError,
                             f"{settings.ledger.url.split('://')[0]} ledger reachable, schema up to date"))
    except LedgerMissing as exc:
        checks.append(Check("warning", "ledger", f"{exc} (the first run creates it)"))
    if all(c.level == "ok" for c in checks if c.name == "store"):
        checks.extend(_lost_ledger(settings))
    checks.append(_schedule(settings))
    credentials = _certificates(settings, checks)
    peer = None
    if "auth_cli" in credentials:
        handshake, peer = _handshake(settings, credentials["auth_cli"])
        checks.append(handshake)
    if settings.dmp.environment == "production":
        checks.extend(_production_on_a_test_server(settings, credentials, peer))
    return checks


def _terminologies(settings: Settings) -> Check:
    """The DMP's tables the coded metadata comes from (their versions: to compare with the DMP's current ones)."""
    from connector.payload import activity, codes

    tables = ", ".join(f"{t.name} {t.version}" for t in map(codes.dmp_terminology, (
        codes.CLASS_MAP, codes.CLASS_CODES, codes.CONTENT_TYPES)))
    default = activity.content_type(settings.submission.default_activity)
    fallback = settings.submission.class_code_fallback
    return Check("ok", "codes", f"{tables}; default activity {settings.submission.default_activity} "
                                f"(contentTypeCode {default.code} {default.display}); types outside {codes.CLASS_MAP}: "
                                + (f"classCode {fallback}" if fallback else "refused"))


def _lost_ledger(settings: Settings) -> list[Check]:
    """What `run` would refuse: a ledger that has fed nothing over a store already fed (state_dir moved…)."""
    from connector.actions.rebuild import refuse_a_lost_ledger, store_records_fed

    store = open_store(settings)
    try:
        refuse_a_lost_ledger(open_settings_ledger(settings), store)
    except LedgerMissing as exc:
        if store_records_fed(store):
            return [Check("error", "ledger", f"{exc}; but the store's dmp_feed_status records documents FED: the "
                                             "ledger was lost or moved; point ledger.url at it, or rebuild it "
                                             "with `dmp-connector db rebuild`")]
    except LedgerError as exc:
        return [Check("error", "ledger", str(exc))]
    return []


def _schedule(settings: Settings) -> Check:
    """What the daemon would refuse at start (the configuration only checks the cron expression's shape)."""
    from connector import scheduler
    from connector.config import ConfigError

    try:
        scheduler.trigger(settings)
    except ConfigError as exc:
        return Check("error", "schedule", str(exc))
    return Check("ok", "schedule", f"{settings.schedule} ({settings.timezone})")


TEST_MARK = re.compile(r"\b(TEST|SANDBOX|BAC ?A ?SABLE)\b", re.IGNORECASE)


def _production_on_a_test_server(settings: Settings, credentials: dict, peer: dict | None) -> list[Check]:
    """environment = "production" lets real NIR/NIA through: refuse it against what looks like a test DMP (a
    local or private address, a server or ORG certificate from a test CA: the sandbox's and the ANS test
    IGC-Santé's names say TEST), where it would send real patients' documents to a test system."""
    found = []
    host = urlsplit(settings.dmp.base_url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
        local = address.is_loopback or address.is_private or address.is_link_local
    except ValueError:
        local = host == "localhost" or host.endswith((".localhost", ".local", ".test", ".example", ".invalid"))
    if local:
        found.append(f"dmp.base_url points at {host}, a local or private address (the sandbox, a test server?)")
    if peer:
        names = [", ".join("=".join(x) for rdn in peer.get(part, ()) for x in rdn) for part in ("subject", "issuer")]
        if any(TEST_MARK.search(n) for n in names):
            found.append(f"the DMP's server certificate is a test one (subject {names[0]}; issuer {names[1]})")
    for purpose, credential in credentials.items():
        issuer = credential.certificate.issuer.rfc4514_string()
        if TEST_MARK.search(issuer):
            found.append(f"the {purpose} certificate is issued by a test CA ({issuer})")
    return [Check("error", "environment", f"dmp.environment is production but {why}") for why in found]


def _homologation(settings: Settings) -> Check:
    """The DMP homologation number the VIHF carries (empty only in test: config refuses it in production)."""
    number = settings.vihf.lps_id_homologation_dmp
    if number:
        return Check("ok", "vihf", f"LPS_ID_HOMOLOGATION_DMP = {number}")
    return Check("warning", "vihf", "vihf.lps_id_homologation_dmp is empty: the DMP refuses a VIHF without the "
                                    "homologation number the GIE SESAM-Vitale gives (required in production)")


def _opens(name: str, open_it, settings: Settings, error: type[Exception], ok: str) -> Check:
    """A database check: opening it checks reachability and its tables (the error says what is wrong)."""
    try:
        open_it(settings)
    except LedgerMissing:
        raise
    except error as exc:
        return Check("error", name, str(exc))
    return Check("ok", name, ok)


def _write_access(settings: Settings) -> Check:
    """Write a probe row to dmp_feed_status (creating the table if needed) in a transaction rolled back: the
    store user's rights are known now, not at the first write-back of a run."""
    import sqlalchemy as sa

    from connector.deliver import short_error
    from connector.store import dmp_feed_status

    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            transaction = conn.begin()
            try:
                dmp_feed_status.create(conn, checkfirst=True)
                conn.execute(sa.insert(dmp_feed_status).values(document_id="dmp-connector check", version=0,
                                                                status="FED"))
            finally:
                transaction.rollback()
    except Exception as exc:
        return Check("error", "store", f"cannot write dmp_feed_status ({short_error(exc)}): grant the store user "
                                       "INSERT and UPDATE on it, or set store.write_back = false")
    return Check("ok", "store", "dmp_feed_status writable (probe row rolled back)")


def _certificates(settings: Settings, checks: list[Check]) -> dict:
    from connector.trust.certs import CertificateError, check_credential, load_credential

    if settings.certificates is None:
        checks.append(Check("error", "certificates", "no [certificates.auth_cli] / [certificates.sign] configured"))
        return {}
    loaded = {}
    for purpose in ("auth_cli", "sign"):
        cert_settings = getattr(settings.certificates, purpose)
        try:
            cred = load_credential(cert_settings)
        except (CertificateError, ValueError, OSError) as exc:
            checks.append(Check("error", purpose, str(exc)))
            continue
        loaded[purpose] = cred
        for path in (cert_settings.p12, cert_settings.password_file):
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:  # the key, or what decrypts it, readable by users other than its owner
                checks.append(Check("warning", purpose, f"{path} is readable by other users (mode {mode:04o}): "
                                                        f"chmod 0600 {path}"))
        for finding in check_credential(cred, purpose, ca_bundle=settings.dmp.ca_bundle):
            checks.append(Check(finding.level, purpose, finding.message))
        ej = cred.finess_ej()
        if ej and ej != settings.structure.finess_ej:
            checks.append(Check("error", purpose, f"certificate FINESS {ej} differs from structure.finess_ej "
                                                  f"{settings.structure.finess_ej}"))
    return loaded


def _handshake(settings: Settings, credential) -> tuple[Check, dict | None]:
    """The mutual-TLS handshake's check, and the server certificate (as ssl reports it) when it succeeded."""
    from connector.dmp import tls

    url = urlsplit(settings.dmp.base_url)
    host, port = url.hostname, url.port or 443
    try:
        context = tls.client_context(settings.dmp.ca_bundle, credential, settings.certificates.auth_cli.password())
        with socket.create_connection((host, port), timeout=settings.dmp.connect_timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                version = conn.version()
                peer = conn.getpeercert() or {}
                # With TLS 1.3 the server judges our certificate after the handshake: one request tells.
                conn.sendall(f"HEAD {url.path or '/'} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                if not conn.recv(64):
                    raise ssl.SSLError("the DMP closed the connection: it refused our AUTH_CLI certificate")
    except ssl.SSLCertVerificationError as exc:
        return Check("error", "dmp", f"{host}:{port}: server certificate not trusted ({exc.verify_message}); "
                                     f"check dmp.ca_bundle"), None
    except (ssl.SSLError, ConnectionResetError) as exc:
        return Check("error", "dmp", f"{host}:{port}: mutual TLS refused ({getattr(exc, 'reason', None) or exc}); "
                                     f"check the AUTH_CLI certificate and dmp.ca_bundle"), None
    except OSError as exc:
        return Check("error", "dmp", f"{host}:{port}: unreachable ({exc.strerror or exc})"), None
    subject = ", ".join("=".join(x) for rdn in peer.get("subject", ()) for x in rdn)
    return Check("ok", "dmp", f"{host}:{port}: mutual TLS handshake ok ({version}, server {subject})"), peer
