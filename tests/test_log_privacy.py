"""No INS, name or birth date of a sample patient in any log line, exception or printed line of a full demo."""

from __future__ import annotations

import logging

from connector import logs, samples
from connector.actions import demo


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))  # includes the formatted exception, if any


def secrets() -> set[str]:
    found = set()
    for p in samples.PATIENTS:
        found |= {p.ins_matricule, p.ins_matricule and p.ins_matricule[:13], p.family, p.used_family,
                  p.birth_date.isoformat(), p.birth_date.strftime("%Y%m%d"), p.birth_date.strftime("%d/%m/%Y")}
        found |= {g for g in p.given.replace("-", " ").split() if len(g) > 2} | {p.given}
    return {s for s in found if s}


def test_full_demo_logs_no_patient_data(tmp_path, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("DEBUG")  # what `dmp-connector --log-level DEBUG` configures
    handler = Lines()
    root.addHandler(handler)
    printed: list[str] = []
    try:
        demo.demo(tmp_path / "demo", echo=printed.append)
        demo.demo(tmp_path / "demo", echo=printed.append)  # a second run: settles, skips, feeds nothing
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    out = capsys.readouterr()
    text = "\n".join(handler.lines + printed + [out.out, out.err])
    assert any("DEBUG" in line for line in handler.lines), "DEBUG logging was not captured"
    assert "fed" in "\n".join(printed)
    leaks = sorted(s for s in secrets() if s in text)
    assert not leaks, f"patient data in logs/output: {leaks}"
