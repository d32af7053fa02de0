"""The in-process schematron engine (`validation.engine = "python"`) against Saxon on the kit's complete schematron.

The corpus: our CDAs from random store rows (hypothesis), the ANS examples, pass-through CDAs, and broken
variants of our CDA made by every generic mutation of every element and attribute (removed, doubled, emptied,
given a nullFlavor or a wrong value). Each must get the same errors (locations and messages, in the same order)
from the run-time path as from Saxon running the kit's schematron compiled as published, with no reduction.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings
from lxml import etree

from connector.payload import cda, ids, schematron_python, validate
from connector.resources import ans_kit

import schematron_mutants
from conftest import make_document, make_patient, make_settings
from test_cda import PDF, patients_and_documents

HL7 = "{urn:hl7-org:v3}"
FIRED = 989  # assertions of the reduced stylesheet the broken variants fire (353 before the targeted mutants)


@pytest.fixture(scope="module")
def reference(reference_schematron):
    return reference_schematron


@pytest.fixture(scope="module")
def structure(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("sp")).structure


def _outcome(check, tree):
    try:
        return check(tree)
    except Exception as exc:  # a dynamic XPath error: both engines must fail on the same documents
        return ("raised",)


def same_verdict(reference, tree: etree._ElementTree, fired: set[str]) -> bool:
    """Assert the run-time path gives the reference's errors; True if the interpreter (not Saxon) checked it, in
    which case the ids of the assertions it found failed are added to `fired`."""
    validate._shrink_body(tree)
    expected = _outcome(reference.errors, tree)
    got = _outcome(lambda t: validate.schematron_errors(t, engine="python"), tree)
    ours = validate._schematron_for(tree) is validate._generated
    if ours and not isinstance(got, tuple):
        fired.update(a for a, _, _ in schematron_python.interpreter().failed(tree))
    assert got == expected
    return ours


def build(structure, document=None, patient=None, content=PDF) -> bytes:
    document = document or make_document()
    uid = ids.document_unique_id(structure.oid_root, document.document_id, document.version)
    return cda.build_cda(document, patient or make_patient(), structure.sites[0], structure, content, unique_id=uid)


@hyp_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patients_and_documents())
def test_our_cdas_from_random_store_rows(reference, structure, case):
    patient, document, content = case
    tree = validate.parse_untrusted(build(structure, document, patient, PDF + content))
    fired = set()
    assert same_verdict(reference, tree, fired)
    assert not fired  # valid: the builder's output


def test_the_ans_examples_as_pass_through_cdas(reference):
    """The kit's examples use elements our builder never writes (telecom, street address lines…): as pass-through
    CDAs they go to Saxon with the whole kit. Without those elements they go through the interpreter."""
    examples = sorted((ans_kit() / "ExemplesCDA").glob("*.xml"))
    assert examples
    for path in examples:
        tree = validate.parse_untrusted(path.read_bytes())
        assert validate._schematron_for(tree) is validate._any
        for element in list(tree.iter(etree.Element)):
            if etree.QName(element).localname not in validate.GENERATED_ELEMENTS and element.getparent() is not None:
                element.getparent().remove(element)
        assert same_verdict(reference, tree, set())
        assert same_verdict(reference, etree.ElementTree(next(_mutants(tree.getroot()))), set())


@pytest.mark.parametrize("xsi_type", ["CS", "XX"])
def test_an_xsi_type_is_read_as_saxon_reads_it(reference, structure, xsi_type):
    """resolve-QName(@xsi:type, .) reads the attribute's value (elementpath raised on the attribute node)."""
    tree = validate.parse_untrusted(build(structure))
    tree.getroot().find(f"{HL7}realmCode").set("{http://www.w3.org/2001/XMLSchema-instance}type", xsi_type)
    assert same_verdict(reference, tree, set())


def _mutants(root: etree._Element):
    """Broken copies of a CDA, each by one generic change: every element removed, doubled, emptied or given a
    nullFlavor; every attribute removed, emptied or given a value of the wrong form; every text emptied."""
    paths = [root.getroottree().getpath(e) for e in root.iter(etree.Element)]
    values = ["", "x", "20261301"]

    def changed(path, change):
        copy_ = copy.deepcopy(root)
        element = copy_.getroottree().xpath(path)[0]
        change(element)
        return copy_

    for path in paths[1:]:
        yield changed(path, lambda e: e.getparent().remove(e))
        yield changed(path, lambda e: e.addnext(copy.deepcopy(e)))
        yield changed(path, lambda e: [e.remove(c) for c in list(e)] + [e.attrib.clear()])
        yield changed(path, lambda e: e.set("nullFlavor", "UNK"))
        yield changed(path, lambda e: setattr(e, "text", None if e.text else "texte"))
    for path in paths:
        element = root.getroottree().xpath(path)[0]
        for name in element.attrib:
            yield changed(path, lambda e, n=name: e.attrib.pop(n))
            for value in values:
                yield changed(path, lambda e, n=name, v=value: e.set(n, v))
        for name in ("classCode", "moodCode", "typeCode"):
            if name not in element.attrib:
                yield changed(path, lambda e, n=name: e.set(n, "X"))


def test_broken_variants_of_our_cda(reference, structure):
    """~900 generic broken CDAs and ~320 targeted ones (tests/schematron_mutants.py: mutations aimed at each assertion
    of the reduced stylesheet, several to a CDA), each through the interpreter. Together they fire 989 (58 %) of the
    1,692 assertions it keeps; tests/schematron_unfired.md lists the others, each with why no CDA the run-time path
    checks can fail it (most need an HL7 element outside GENERATED_ELEMENTS, which sends a CDA to Saxon) or says it
    is not proven; this test checks that list is the one its corpus leaves."""
    ours, fired = 0, set()
    root = validate.parse_untrusted(build(structure)).getroot()
    for mutant in _mutants(root):
        ours += same_verdict(reference, etree.ElementTree(mutant), fired)
    assert ours >= 800
    targeted = 0
    for _, mutant in schematron_mutants.selected(root):
        targeted += same_verdict(reference, etree.ElementTree(mutant), fired)
    assert targeted >= 250
    assertions = {a.id for a in schematron_python.interpreter().assertions}
    assert fired <= assertions and len(fired) >= FIRED, (len(fired), len(assertions))
    assert schematron_mutants.listed_unfired() == assertions - fired, "run python tests/schematron_mutants.py"


@pytest.mark.parametrize("validation, started", [
    ({}, False),
    ({"engine": "saxon"}, True),
    ({"engine": "python"}, False),
    ({"engine": "python", "process": True}, False),
    ({"schematron": "off"}, False),
])
def test_the_python_engine_starts_no_schematron_process(tmp_path, validation, started):
    from connector.actions import run

    checker = run.schematron_process(make_settings(tmp_path, validation=validation))
    try:
        assert (checker is not None) == started
    finally:
        if checker is not None:
            checker.close()


def test_the_engine_setting(tmp_path):
    assert make_settings(tmp_path).validation.engine == "python"
    with pytest.raises(Exception, match="validation.engine"):
        make_settings(tmp_path, validation={"engine": "xalan"})
