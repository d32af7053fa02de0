"""Session-wide test PKI (generated at run time, never committed), loaded by conftest.py as a pytest plugin:
the fixtures `pki`, `sign_credential` and `auth_credential` are available to every test module."""

from __future__ import annotations

import pytest

from connector.config import CertificateSettings
from connector.trust.certs import Credential, load_credential
from connector.trust.pki import PkiFiles, create_test_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PkiFiles:
    return create_test_pki(tmp_path_factory.mktemp("pki"))


def sign_settings(pki: PkiFiles) -> CertificateSettings:
    return CertificateSettings(p12=pki.sign_p12, password_file=pki.sign_password_file)


def auth_settings(pki: PkiFiles) -> CertificateSettings:
    return CertificateSettings(p12=pki.auth_cli_p12, password_file=pki.auth_cli_password_file)


@pytest.fixture(scope="session")
def sign_credential(pki) -> Credential:
    return load_credential(sign_settings(pki))


@pytest.fixture(scope="session")
def auth_credential(pki) -> Credential:
    return load_credential(auth_settings(pki))

