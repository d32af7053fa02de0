"""Mutual TLS towards the DMP: one ssl.SSLContext per process and configuration, used by requests.

The ORG AUTH_CLI private key reaches OpenSSL as an *encrypted* PEM through an anonymous memory file
(memfd, never on disk); where memfd is unavailable, through a 0600 temporary file deleted at once.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
import threading
from pathlib import Path

import requests
from cryptography.hazmat.primitives import hashes
from requests.adapters import HTTPAdapter

from connector.config import DmpSettings
from connector.dmp.exchange import BoundedAdapter
from connector.trust.certs import Credential

_contexts: dict[tuple[str | None, bytes], ssl.SSLContext] = {}
_lock = threading.Lock()


def client_context(ca_bundle: Path | None, credential: Credential, password: bytes | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context: verifies the server against `ca_bundle` (system CAs if None) with
    hostname checking, and presents the credential's certificate chain. Cached per (bundle, certificate)."""
    key = (str(ca_bundle) if ca_bundle else None, credential.certificate.fingerprint(hashes.SHA256()))
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = _build(ca_bundle, credential, password)
        return ctx


def _build(ca_bundle: Path | None, credential: Credential, password: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=str(ca_bundle))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    # The PEM only carries the key across to OpenSSL: any strong password does, a one-time one is best.
    transit = password or secrets.token_urlsafe(32).encode()
    _load_cert_chain(ctx, credential.pem_chain() + credential.encrypted_key_pem(transit), transit)
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, pem: bytes, password: bytes) -> None:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("dmp-auth-cli", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            path = f"/proc/self/fd/{fd}"
            ctx.load_cert_chain(path, path, password=password)
            return
        except OSError:
            pass  # /proc not mounted: fall back to a private temporary file
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="dmp-tls-") as tmp:  # 0700 directory, file 0600
        path = os.path.join(tmp, "auth_cli.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        ctx.load_cert_chain(path, path, password=password)


def clear_cache() -> None:
    with _lock:
        _contexts.clear()


class MutualTlsAdapter(BoundedAdapter):
    """A requests adapter whose pools all use one prepared SSLContext (and whose exchanges are bounded: exchange.py).

    requests would otherwise point every connection at certifi's bundle (cert_verify) and urllib3 would
    load it into our context, silently trusting every public CA: verification is the context's job."""

    def __init__(self, ssl_context: ssl.SSLContext, **kwargs):
        self.ssl_context = ssl_context
        super().__init__(max_retries=0, **kwargs)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        pool_kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        proxy_kwargs["ssl_context"] = self.ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn, url, verify, cert):
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, True, None)
        for name in ("ca_certs", "ca_cert_dir", "cert_file", "key_file"):  # REQUESTS_CA_BUNDLE & co.
            pool_kwargs.pop(name, None)
        pool_kwargs["cert_reqs"] = "CERT_REQUIRED"
        return host_params, pool_kwargs


def mtls_session(dmp: DmpSettings, credential: Credential, password: bytes | None = None) -> requests.Session:
    """A requests.Session doing mutual TLS with connection pooling (pool sized to max_in_flight), each exchange
    bounded by dmp.request_deadline and dmp.max_reply_bytes, never redirected."""
    session = requests.Session()
    session.headers["Accept-Encoding"] = "identity"  # replies are read undecoded (exchange.py): no compression
    adapter = MutualTlsAdapter(
        client_context(dmp.ca_bundle, credential, password), pool_connections=2, pool_maxsize=dmp.max_in_flight,
        deadline=dmp.request_deadline, max_reply_bytes=dmp.max_reply_bytes,
    )
    session.mount("https://", adapter)
    session.mount("http://", _RefuseHttp())
    return session


class _RefuseHttp(HTTPAdapter):
    def send(self, request, *args, **kwargs):
        raise requests.exceptions.InvalidURL("the DMP is only reachable over https://")
