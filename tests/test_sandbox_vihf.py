"""The sandbox's VIHF refusals, each made to fire: no VIHF, missing attributes, a NameID that is not a
national id, a physician without savoir-faire, an empty homologation number (and our own VIHF passes)."""

from __future__ import annotations

import dataclasses

import pytest
from lxml import etree

from connector.dmp import soap
from connector.sandbox import checks
from connector.trust.vihf import SAML_NS, build_vihf, sign_assertion
from connector.trust.xmlsig import DS_NS
from conftest import make_settings

NS = {"saml": SAML_NS, "ds": DS_NS, "hl7": "urn:hl7-org:v3"}
INS_CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("settings"))


@pytest.fixture(scope="module")
def ca_pem(pki):
    return pki.ca_cert.read_bytes()


def _vihf(sign_credential, vihf_settings, **overrides):
    kw = dict(finess_geo="0B0999998", facility_type="SA01", patient_ins_cx=INS_CX, subject_rpps="10001234567",
              subject_specialty="G15_10/SM26")
    kw.update(overrides)
    return build_vihf(sign_credential, vihf_settings, **kw)


def _resigned(assertion, credential, change):
    """`assertion` changed by `change` and signed again: a VIHF whose signature holds, whose content is wrong."""
    assertion = etree.fromstring(etree.tostring(assertion))
    assertion.remove(assertion.find("ds:Signature", NS))
    change(assertion)
    assertion = etree.fromstring(etree.tostring(assertion))
    sign_assertion(assertion, credential, "sha1")
    return assertion


def _checked(ca_pem, *security):
    env = soap.envelope(etree.Element(f"{{{soap.XDSB}}}ProvideAndRegisterDocumentSetRequest"),
                        action=soap.ITI41_ACTION, to="https://dmp.test/repository", security=security)
    _, errors = checks.vihf_check(etree.fromstring(soap.to_bytes(env)), ca_pem)
    return {e.check: e.context for e in errors}


def test_our_vihf_passes(sign_credential, settings, ca_pem):
    assert _checked(ca_pem, _vihf(sign_credential, settings.vihf)) == {}


def test_a_request_without_vihf_is_refused(ca_pem):
    assert set(_checked(ca_pem)) == {"vihf.missing"}


def test_missing_attributes_are_refused_and_named(sign_credential, settings, ca_pem):
    def drop(assertion):
        statement = assertion.find("saml:AttributeStatement", NS)
        for attribute in list(statement):
            if attribute.get("Name") in ("Ressource_URN", "LPS_Nom", "Authentification_mode"):
                statement.remove(attribute)

    found = _checked(ca_pem, _resigned(_vihf(sign_credential, settings.vihf), sign_credential, drop))
    assert set(found) == {"vihf.attributes"}
    for name in ("Ressource_URN", "LPS_Nom", "Authentification_mode"):
        assert name in found["vihf.attributes"]


def test_name_id_that_is_not_a_national_id_is_refused(sign_credential, settings, ca_pem):
    for name_id in ("10001234567", "XXXXX/XXXXXX", "0B0999998/10001234567", "910001234567"):
        def bare(assertion, name_id=name_id):
            assertion.find("saml:Subject/saml:NameID", NS).text = name_id

        found = _checked(ca_pem, _resigned(_vihf(sign_credential, settings.vihf), sign_credential, bare))
        assert set(found) == {"vihf.name_id"}, name_id


@pytest.mark.parametrize("specialty", ["G15_10/SM26", "G15_21/H"])
def test_physician_or_pharmacist_role_without_savoir_faire_is_refused(sign_credential, settings, ca_pem, specialty):
    def profession_only(assertion):
        values = assertion.findall("saml:AttributeStatement/saml:Attribute/saml:AttributeValue[hl7:Role]", NS)
        assert len(values) == 2
        values[1].getparent().remove(values[1])

    vihf = _vihf(sign_credential, settings.vihf, subject_specialty=specialty)
    assert _checked(ca_pem, vihf) == {}
    found = _checked(ca_pem, _resigned(vihf, sign_credential, profession_only))
    assert set(found) == {"vihf.role"}


def test_a_nurse_needs_no_second_role(sign_credential, settings, ca_pem):
    assert _checked(ca_pem, _vihf(sign_credential, settings.vihf, subject_specialty="G15_60")) == {}


def test_empty_homologation_number_is_refused(sign_credential, settings, ca_pem):
    empty = dataclasses.replace(settings.vihf, lps_id_homologation_dmp="")
    found = _checked(ca_pem, _vihf(sign_credential, empty))
    assert set(found) == {"vihf.homologation"} and "LPS_ID_HOMOLOGATION_DMP" in found["vihf.homologation"]


def test_either_spelling_of_the_authentication_mode_is_accepted_once(sign_credential, settings, ca_pem):
    ans = dataclasses.replace(settings.vihf, authentification_mode_attribute="Authentification_Mode")
    assert _checked(ca_pem, _vihf(sign_credential, ans)) == {}

    def both(assertion):
        statement = assertion.find("saml:AttributeStatement", NS)
        twin = etree.fromstring(etree.tostring(statement.find("saml:Attribute[@Name='Authentification_mode']", NS)))
        twin.set("Name", "Authentification_Mode")
        twin[0].text = "DIRECTE"
        statement.append(twin)

    found = _checked(ca_pem, _resigned(_vihf(sign_credential, settings.vihf), sign_credential, both))
    assert set(found) == {"vihf.mode"}
