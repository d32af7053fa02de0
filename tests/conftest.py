"""Shared test factories: fictitious patients and documents (test INS OID .10), settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from connector import config
from connector.store import Document, Patient

pytest_plugins = ["pki_fixtures"]  # session-wide test PKI: pki, sign_credential, auth_credential

TEST_INS_OID = "1.2.250.1.213.1.4.10"


def make_patient(**overrides) -> Patient:
    values = dict(
        patient_id="IPP0001",
        ins_matricule="279035121518989",  # ANS example NIR, key 89 verifies
        ins_oid=TEST_INS_OID,
        identity_status="QUAL",
        birth_family_name="PAT-TROIS",
        birth_given_names="DOMINIQUE MARIE",
        used_family_name="PAT-TROIS",
        used_given_name="DOMINIQUE",
        sex="F",
        birth_date=dt.date(1979, 3, 12),
        birth_place_code="51215",
        opposed_to_feeding=False,
        deceased_at=None,
    )
    values.update(overrides)
    return Patient(**values)


def make_document(**overrides) -> Document:
    values = dict(
        document_id="DOC0001",
        version=1,
        patient_id="IPP0001",
        finess_geo="0B0999998",
        type_code="11490-0",  # Lettre de sortie (JDV_J07)
        title="Lettre de liaison de sortie",
        created_at=dt.datetime(2026, 11, 20, 14, 30),
        service_start=dt.datetime(2026, 11, 15, 9, 0),
        service_stop=dt.datetime(2026, 11, 20, 12, 0),
        author_rpps="10001234567",
        author_family_name="MARTIN",
        author_given_name="Claire",
        author_specialty_code="G15_10/SM26",
        legal_authenticator_rpps="10001234567",
        status="VALIDATED",
        mime_type="application/pdf",
        content_path="doc1.pdf",
        content=None,
        mask_professionals=False,
        invisible_to_patient=False,
        invisible_to_legal_representatives=False,
        updated_at=dt.datetime(2026, 11, 20, 14, 31),
    )
    values.update(overrides)
    return Document(**values)


def settings_dict(tmp_path: Path) -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "structure": {
            "finess_ej": "0B0999999",
            "oid_root": "1.2.250.1.999.42",
            "name": "Centre Hospitalier de Test",
            "sites": [
                {
                    "finess_geo": "0B0999998",
                    "name": "Hôpital Sainte-Anne-d'Auray (site test)",
                    "healthcare_facility_type": "SA01",
                    "practice_setting": "ETABLISSEMENT",
                },
                {
                    "finess_geo": "0B0999997",
                    "name": "Clinique de l'Étang",
                    "healthcare_facility_type": "SA04",  # établissement privé non PSPH
                    "practice_setting": "ETABLISSEMENT",
                },
            ],
        },
        "store": {"url": f"sqlite:///{tmp_path / 'store.sqlite3'}"},
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
        "dmp": {"base_url": "https://127.0.0.1:8443/si-dmp-server/v2/services", "environment": "test"},
        "vihf": {"responsible_rpps": "10001234567", "responsible_specialty": "G15_10/SM26",
                 "lps_id_homologation_dmp": "TEST-HOMOLOGATION"},
    }


def make_settings(tmp_path: Path, **section_overrides) -> config.Settings:
    data = settings_dict(tmp_path)
    for section, values in section_overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config.from_dict(data, base=tmp_path)


@pytest.fixture(scope="session")
def reference_schematron(tmp_path_factory):
    """The kit's schematron exactly as the ISO skeleton compiles it, without our reductions, run by Saxon
    (~10 s and ~900 MB to compile: once per test session)."""
    from connector.payload import validate

    directory = tmp_path_factory.mktemp("strucmin")
    (directory / validate._TYPE_CODE_VOC).write_bytes(validate._type_code_voc())
    path = directory / "complete.xsl"
    path.write_text(validate._generate_stylesheet(directory, None, reduce=False), encoding="utf-8")
    return validate._Schematron(lambda: path)


@pytest.fixture
def settings(tmp_path) -> config.Settings:
    return make_settings(tmp_path)


@pytest.fixture
def patient() -> Patient:
    return make_patient()


@pytest.fixture
def document() -> Document:
    return make_document()


def replace(obj, **changes):
    return dataclasses.replace(obj, **changes)


# --- PostgreSQL: a required component. Tests that need it FAIL (never skip) when it is unreachable. ----

PG_URL = __import__("os").environ.get("DMP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards (tests stay independent)."""
    import uuid

    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_URL} and is unreachable: {exc.orig}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# --- the sandbox DMP, started on demand (several per test if needed), stopped afterwards ---------------

@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "sandbox.sqlite3"


@pytest.fixture
def start(pki, state_path):
    """start(**options) -> a running sandbox (fast checks unless told); every one is stopped after the test."""
    from connector.sandbox.server import serve

    servers = []

    def start(**options):
        options.setdefault("fast", True)
        options.setdefault("state_path", state_path)
        server = serve(pki_dir=pki.directory, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
