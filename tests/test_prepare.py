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


def test_a_patients_documents_are_grouped_per_site_and_activity(tmp_path):
    from conftest import make_patient
    from connector.samples import minimal_pdf
    from connector.scan import Decision

    settings = make_settings(tmp_path, validation={"schematron": "off"}, submission={"default_activity": "O"})
    patient = make_patient()
    rows = [("D1", "I", "0B0999998"), ("D2", "O", "0B0999998"), ("D3", None, "0B0999998"),  # D3: default O
            ("D4", "I", "0B0999998"), ("D5", "I", "0B0999997"), ("D6", "03", "0B0999998")]  # D6: I is 03 too
    eligible = []
    for document_id, activity, finess in rows:
        doc = make_document(document_id=document_id, activity=activity, finess_geo=finess)
        eligible.append(Decision(document_id, 1, patient.patient_id, None, document=doc, patient=patient,
                                 content=minimal_pdf(["Document fictif"])))
    failures, batches = prepare.plan_patient(settings, eligible)
    assert failures == []
    grouped = sorted((b.site.finess_geo, [d.document_id for d, _, _ in b.documents]) for b in batches)
    assert grouped == [("0B0999997", ["D5"]), ("0B0999998", ["D1", "D4", "D6"]), ("0B0999998", ["D2", "D3"])]
