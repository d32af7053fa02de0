"""The schematron in a process of its own (validation.process): the same verdicts as in the caller's
process, the caller going on meanwhile, and a fallback to the caller's process if that process dies."""

from __future__ import annotations

import logging
import os
import re
import signal

import pytest

from connector.payload import cda, schematron_process, validate
from connector.payload.errors import PayloadError
from connector.payload.schematron_process import SchematronProcess
from connector.resources import ans_kit

from conftest import make_document, make_patient, make_settings

EXAMPLE = ans_kit() / "ExemplesCDA" / "DOC_NON_STRUCTURE_CDA-R2-N1.xml"


def broken(xml: bytes, pattern: str, replacement: bytes = b"") -> bytes:
    changed = re.sub(pattern.encode(), replacement, xml, count=1, flags=re.S)
    assert changed != xml
    return changed


@pytest.fixture(scope="module")
def process():
    with SchematronProcess() as p:
        yield p


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, bytes]:
    """Ours and the kit's, valid and broken in ways only the schematron (or both validators) see."""
    structure = make_settings(tmp_path_factory.mktemp("sp")).structure
    ours = cda.build_cda(make_document(), make_patient(), structure.sites[0], structure, b"%PDF-1.4 x",
                         unique_id="1.2.250.1.999.42.1.1.1")
    example = EXAMPLE.read_bytes()
    return {
        "ours": ours,
        "ours-no-county": broken(ours, r"<county>[^<]*</county>"),
        "ours-unknown-type": broken(ours, r'<code code="[0-9]+-[0-9]"', b'<code code="99999-9"'),
        "example": example,
        "example-bad-birth-time": broken(example, r'<birthTime value="19790328"/>', b'<birthTime value="1979x0328"/>'),
        "example-no-location": broken(example, r"<location>.*?</location>"),
    }


def verdict(check) -> str | None:
    try:
        check()
    except PayloadError as exc:
        assert exc.reason == "CDA_INVALID"
        return str(exc)
    return None


def test_same_verdicts_as_in_the_callers_process(process, cases):
    started = {name: validate.start_cda_validation(xml, name, process=process) for name, xml in cases.items()}
    found = {name: verdict(check) for name, check in started.items()}  # all sent before the first answer is read
    expected = {name: verdict(lambda xml=xml: validate.validate_cda(xml, name)) for name, xml in cases.items()}
    assert found == expected
    assert found["ours"] is None and found["example"] is None
    assert all(found[name] for name in cases if name not in ("ours", "example")), found
    assert "schematron" in found["ours-no-county"] and "XSD" in found["example-bad-birth-time"]


def test_falls_back_to_the_callers_process_when_it_dies(cases, caplog):
    with SchematronProcess() as p:
        validate.start_cda_validation(cases["ours"], "warm", process=p)()  # the process is up
        for pid in list(p._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="connector.validate"):
            first = verdict(validate.start_cda_validation(cases["ours-no-county"], "D1", process=p))
            second = verdict(validate.start_cda_validation(cases["ours-no-county"], "D2", process=p))
    assert first and "schematron" in first and second and "schematron" in second
    assert verdict(validate.start_cda_validation(cases["ours"], "D3", process=p)) is None
    warnings = [r for r in caplog.records if "schematron process ended" in r.getMessage()]
    assert len(warnings) == 1


def test_without_a_process_the_checks_run_in_the_callers(cases, caplog, monkeypatch):
    def refused(*args, **kwargs):
        raise OSError(38, "Function not implemented")  # what sem_open says where /dev/shm is missing

    monkeypatch.setattr(schematron_process, "ProcessPoolExecutor", refused)
    with caplog.at_level(logging.WARNING, logger="connector.validate"):
        with SchematronProcess() as p:
            found = verdict(validate.start_cda_validation(cases["ours-no-county"], "D1", process=p))
            assert verdict(validate.start_cda_validation(cases["ours"], "D2", process=p)) is None
    assert found and "schematron" in found
    assert [r.getMessage() for r in caplog.records] == ["no schematron process (OSError); checking CDAs in the run's own process"]
