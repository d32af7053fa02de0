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


# --- a run killed with SIGKILL leaves no process behind -------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            found[int(entry)] = (int(fields[1]), fields[0].decode())
    return found


def _descendants(pid: int) -> set[int]:
    table, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, (ppid, _) in table.items() if ppid == parent}
        found |= children
        todo += children
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}  # a zombie has ended (its reaper is not us)


def test_a_run_killed_with_sigkill_leaves_no_helper_process(tmp_path, pki):
    """The schematron process and multiprocessing's resource tracker outlived a killed run, children of init,
    ignoring SIGTERM (≈ 225 MB each, night after night)."""

    import delivery_harness as h
    from hostile_server import wait_for

    h.synthetic_store(tmp_path / "store", 40, seed=7)
    folder = h.make_folder(tmp_path, pki_from=pki.directory)
    with h.sandbox(folder, latency_ms=200) as sb:
        folder.configure(sb.url, validation={"process": True, "engine": "saxon"})  # the run's own schematron process
        run = h.popen_run(folder.cfg, log_path=tmp_path / "run.log")
        helpers: set[int] = set()
        try:
            def both_helpers_started() -> bool:  # the resource tracker, then the schematron process
                helpers.update(_descendants(run.pid))
                assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                return len(_alive(helpers)) >= 2

            wait_for(both_helpers_started, timeout=120, what="the run's helper processes")
            os.kill(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
            wait_for(lambda: not _alive(helpers), timeout=30, what=f"helper processes {sorted(_alive(helpers))} ended")
        finally:
            for pid in _alive(helpers | {run.pid}):  # never leave them behind, even when the test fails
                os.kill(pid, signal.SIGKILL)
            if run.poll() is None:
                run.wait(timeout=30)
