"""How CDAs are validated before sending: XSD always, the ANS schematron as `validation.schematron` says."""

import pytest

from conftest import make_document, make_settings
from connector import prepare


@pytest.fixture(autouse=True)
def fresh_counts():
    prepare._sampled.clear()
    yield
    prepare._sampled.clear()


def test_every_and_off(tmp_path):
    site = make_settings(tmp_path).structure.sites[0]
    every = make_settings(tmp_path)
    off = make_settings(tmp_path, validation={"schematron": "off"})
    doc = make_document()
    assert all(prepare._schematron_due(every, site, doc) for _ in range(5))
    assert not any(prepare._schematron_due(off, site, doc) for _ in range(5))


def test_sample_checks_the_first_of_each_site_and_type_then_one_in_n(tmp_path):
    settings = make_settings(tmp_path, validation={"schematron": "sample", "sample_every": 3})
    a, b = settings.structure.sites
    letter, report = make_document(type_code="11490-0"), make_document(type_code="11488-4")
    assert [prepare._schematron_due(settings, a, letter) for _ in range(7)] == [True, False, False, True, False, False, True]
    assert prepare._schematron_due(settings, a, report)  # another type: its first is checked
    assert prepare._schematron_due(settings, b, letter)  # another site: its first is checked


def test_unknown_mode_is_a_config_error(tmp_path):
    from connector.config import ConfigError

    with pytest.raises(ConfigError, match="validation.schematron"):
        make_settings(tmp_path, validation={"schematron": "sometimes"})
