"""`dmp-connector intake folder`: a drop folder. Each document file (a CDA `X.xml`, or a PDF `X.pdf`), with its
optional JSON sidecar `X.json` of store-contract columns (required for a PDF), is committed to the store by the
HL7 intake's Writer (one transaction), then moved to `done/`; a file that cannot be taken is moved to
`rejected/` beside a one-line `X.reason` (a code and what is wrong: never a value of the file).

Only complete files are taken (the sender's rename convention): a name starting with '.' or ending with `.part`
is being written and is left alone; the sidecar is renamed into place before its document, whose own rename
marks the set complete (a PDF found without its sidecar waits for it, an orphan sidecar waits for its document,
each up to `orphan_minutes`, then is rejected). A rename within one filesystem is atomic: a file under its final
name is whole.

Crash safety: the store commit comes before the move. Killed in between, the next sweep finds the file again and
the Writer recognises it (same name and bytes, or same document version with the same content): recorded once,
then moved to `done/`. Nothing is followed out of the folder: symbolic links, directories, devices and FIFOs
are rejected without being opened (O_NOFOLLOW, O_NONBLOCK, then fstat).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from connector import store as contract, testhooks
from connector.intake import message as hl7msg
from connector.intake.figures import ACCEPTED, FOLDER, RESEND, Recorder
from connector.intake.message import INITIAL, REPLACEMENT, Header, Intake, Refused
from connector.intake.writer import Writer
from connector.payload.cda import GENDERS, HL7 as V3_NS, INS_OIDS
from connector.payload.validate import parse_untrusted
from connector.printable import printable

log = logging.getLogger("connector.intake")

DONE, REJECTED = "done", "rejected"
DOCUMENTS = {".xml": "text/xml", ".pdf": "application/pdf"}
SIDECAR = ".json"
_NS = {"v3": V3_NS}

# The sidecar's keys: the store contract's columns a sender may give (opposition stays as the store has it; a
# document's content, type and status are the file's own).
PATIENT_KEYS = tuple(c.name for c in contract.dmp_patient.columns if c.name != "opposed_to_feeding")
DOCUMENT_KEYS = tuple(c.name for c in contract.dmp_document.columns
                      if c.name not in ("patient_id", "status", "mime_type", "content_path", "content", "updated_at"))


class Rejected(Exception):
    """A file that cannot be taken: `code` (figures, the .reason file) and what is wrong (no value of the file)."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass(frozen=True)
class Outcome:
    name: str  # the document's (or the rejected entry's) file name
    outcome: str  # "accepted", "resend" or the rejection code
    detail: str = ""


class Folder:
    """One drop folder: `sweep()` takes what is complete in it."""

    def __init__(self, settings, writer: Writer, recorder: Recorder | None = None, clock=time.time):
        self.settings, self.writer, self.recorder, self.clock = settings, writer, recorder, clock
        self.path = Path(settings.path)

    def prepare(self) -> None:
        for sub in (DONE, REJECTED):
            (self.path / sub).mkdir(mode=0o750, exist_ok=True)

    def sweep(self) -> list[Outcome]:
        """Take every complete file of the folder once; never raises for a file (each gets an outcome or waits)."""
        try:
            entries = {e.name: e for e in os.scandir(self.path)}
        except OSError as exc:
            log.error("intake folder: cannot list %s: %s", self.path, exc.strerror or exc)
            return []
        stems: dict[str, list[str]] = {}
        for name in entries:
            if name in (DONE, REJECTED) or name.startswith(".") or name.endswith(".part"):
                continue  # ours, or being written
            stems.setdefault(os.path.splitext(name)[0], []).append(name)
        outcomes = []
        for stem in sorted(stems):
            outcomes += self._stem(stem, sorted(stems[stem]), entries)
        return outcomes

    def _stem(self, stem: str, names: list[str], entries: dict) -> list[Outcome]:
        sidecars = [n for n in names if os.path.splitext(n)[1].lower() == SIDECAR]
        documents = [n for n in names if os.path.splitext(n)[1].lower() in DOCUMENTS]
        others = [n for n in names if n not in sidecars and n not in documents]
        out = [self._reject([n], Rejected("NOT_A_DOCUMENT", "not a .xml (CDA), .pdf or .json (sidecar) file"))
               for n in others]
        if len(documents) > 1 or len(sidecars) > 1:
            return out + [self._reject(documents + sidecars, Rejected("AMBIGUOUS", (
                f"several documents or sidecars named {printable(stem, 200)}.*: one document and one sidecar")))]
        sidecar = sidecars[0] if sidecars else None
        if not documents or (DOCUMENTS[os.path.splitext(documents[0])[1].lower()] != "text/xml" and not sidecar):
            waiting = documents[0] if documents else sidecar
            if waiting is None or not self._orphaned(entries[waiting]):
                return out  # its other half is still coming
            return out + [self._reject([waiting], Rejected("INCOMPLETE", (
                "a PDF without its sidecar .json" if documents else "a sidecar without its document (.xml or .pdf)")
                + f" for over intake.folder.orphan_minutes ({self.settings.orphan_minutes:g})"))]
        return out + [self._take(documents[0], sidecar, entries)]

    def _orphaned(self, entry: os.DirEntry) -> bool:
        try:
            age = self.clock() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            return False
        return age >= self.settings.orphan_minutes * 60

    # --- one document ----------------------------------------------------------------------------

    def _take(self, name: str, sidecar: str | None, entries: dict) -> Outcome:
        started = time.monotonic()
        files = [name] + ([sidecar] if sidecar else [])
        try:
            content = self._read(entries[name])
            fields = self._sidecar(self._read(entries[sidecar])) if sidecar else {}
            intake = self._intake(name, content, fields)
            written = self.writer.write(intake)
            testhooks.point("intake_folder_after_commit")
        except Rejected as exc:
            return self._reject(files, exc, started)
        except FileNotFoundError:
            log.warning("intake folder: %s vanished while being read: left for the next sweep", printable(name, 200))
            return Outcome(name, "vanished")
        except Refused as exc:
            if exc.ack_code == "AR":  # the store is unavailable: the file waits for the next sweep
                log.warning("intake folder: %s left in place: %s", printable(name, 200), exc.text)
                return Outcome(name, "store_unavailable", exc.text)
            return self._reject(files, Rejected("REFUSED_BY_STORE", exc.text), started)
        except Exception:  # a defect of ours: this file is left in place, the sweep goes on
            log.exception("intake folder: %s: internal error, left in place", printable(name, 200))
            return Outcome(name, "internal_error")
        outcome = RESEND if written.duplicate else ACCEPTED
        log.info("intake folder: %s: %s of document %s version %d %s", printable(name, 200), intake.action,
                 written.document_id, written.version, "already recorded (taken again after a stop)"
                 if written.duplicate else "committed")
        self._move(files, DONE)
        self._count(outcome, started)
        return Outcome(name, outcome)

    def _read(self, entry: os.DirEntry) -> bytes:
        """The bytes of a regular file of the folder itself, at most max_file_bytes; raises Rejected (or
        FileNotFoundError: gone meanwhile)."""
        shown = printable(entry.name, 200)
        if entry.is_symlink():
            raise Rejected("SYMLINK", f"{shown} is a symbolic link (never followed)")
        if entry.is_dir(follow_symlinks=False):
            raise Rejected("NOT_A_FILE", f"{shown} is a directory")
        limit = self.settings.max_file_bytes
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(entry.path) from None
            if exc.errno == errno.ELOOP:
                raise Rejected("SYMLINK", f"{shown} is a symbolic link (never followed)") from None
            raise Rejected("UNREADABLE", f"{shown} cannot be opened: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Rejected("NOT_A_FILE", f"{shown} is not a regular file")
            if st.st_size > limit:
                raise Rejected("TOO_LARGE", f"{shown} is over intake.folder.max_file_bytes ({limit})")
            try:
                data = contract.read_capped(fh, st.st_size, limit)
            except OSError as exc:
                raise Rejected("UNREADABLE", f"{shown} cannot be read: {exc.strerror}") from None
        if len(data) > limit:  # grew meanwhile
            raise Rejected("TOO_LARGE", f"{shown} is over intake.folder.max_file_bytes ({limit})")
        return data

    @staticmethod
    def _sidecar(data: bytes) -> dict:
        try:
            fields = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Rejected("SIDECAR_INVALID", "the sidecar is not JSON (UTF-8)") from None
        if not isinstance(fields, dict):
            raise Rejected("SIDECAR_INVALID", "the sidecar is not a JSON object")
        unknown = sorted(set(fields) - set(PATIENT_KEYS) - set(DOCUMENT_KEYS))
        if unknown:
            raise Rejected("SIDECAR_INVALID", "unknown sidecar keys (store contract columns only): "
                                              + ", ".join(printable(k, 40) for k in unknown[:5]))
        return {key: _column_value(key, value) for key, value in fields.items()}

    def _intake(self, name: str, content: bytes, fields: dict) -> Intake:
        """The store rows a document file and its sidecar's fields make; raises Rejected."""
        mime = DOCUMENTS[os.path.splitext(name)[1].lower()]
        patient = {k: v for k, v in fields.items() if k in PATIENT_KEYS}
        document = {k: v for k, v in fields.items() if k in DOCUMENT_KEYS}
        try:
            if mime == "text/xml":
                action, unique_id, parent_id, set_id = _from_cda(content, patient, document)
            else:
                action, unique_id, parent_id, set_id = _from_pdf(content, document)
            hl7msg.check_lengths(document)
        except Refused as exc:  # what the HL7 reading raises about a CDA header
            raise Rejected("CDA_UNREADABLE", exc.text) from None
        if patient.get("ins_matricule") and not patient.get("ins_oid"):
            raise Rejected("SIDECAR_INVALID", "ins_matricule without ins_oid")
        if not patient.get("patient_id"):
            if not patient.get("ins_matricule"):
                raise Rejected("NO_PATIENT", "no patient: the CDA has no INS and the sidecar no patient_id")
            patient["patient_id"] = hl7msg.ins_pseudonym(patient["ins_oid"], patient["ins_matricule"])
        if not document.get("finess_geo"):
            raise Rejected("NO_FINESS", "no FINESS géographique: the CDA has no healthCareFacility id and the sidecar "
                                        "no finess_geo")
        for key in ("version", "document_id"):
            document.pop(key, None)
        document.update(mime_type=mime, status="VALIDATED", destined_to_dmp=True)
        digest = hashlib.sha256(hashlib.sha256(content).digest() + json.dumps(fields, sort_keys=True, default=str)
                                .encode()).hexdigest()
        header = Header(sending_application="folder", sending_facility=str(self.path)[-190:],
                        control_id=name[-200:])
        return Intake(header, action, unique_id, parent_id, set_id, content, patient, document, digest)

    # --- outcomes --------------------------------------------------------------------------------

    def _reject(self, files: list[str], exc: Rejected, started: float | None = None) -> Outcome:
        log.warning("intake folder: %s rejected %s: %s", printable(files[0], 200), exc.code, exc.text)
        moved = self._move(files, REJECTED)
        if moved:
            reason = self.path / REJECTED / (moved + ".reason")
            try:
                reason.write_text(f"{exc.code}: {exc.text}\n", encoding="utf-8")
            except OSError as err:
                log.error("intake folder: cannot write %s: %s", reason, err.strerror or err)
        self._count(exc.code, started)
        return Outcome(files[0], exc.code, exc.text)

    def _move(self, files: list[str], where: str) -> str | None:
        """Rename the document, then its sidecar, into done/ or rejected/ (the sidecar never before its document:
        a sidecar left alone is never taken as complete). Returns the document's name there (None if not moved):
        its own, or with a `.N` suffix when one of that name is already there (nothing is overwritten)."""
        target = self.path / where
        suffix = _free_suffix(target, files)
        for file in files:
            try:
                os.rename(self.path / file, target / (file + suffix))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("intake folder: cannot move %s to %s/: %s (taken again next sweep)", printable(file, 200),
                          where, exc.strerror or exc)
                return None
        return files[0] + suffix

    def _count(self, outcome: str, started: float | None) -> None:
        if self.recorder is not None:
            self.recorder.count(FOLDER + outcome,
                                0.0 if started is None else (time.monotonic() - started) * 1000)


def _free_suffix(directory: Path, files: list[str]) -> str:
    """'' or '.N': the suffix under which the files (and the document's .reason) overwrite nothing in done/ or
    rejected/ (a file of the same name sent again)."""
    n, suffix = 0, ""
    while any(os.path.lexists(directory / (f + suffix)) for f in files + [files[0] + ".reason"]):
        n += 1
        suffix = f".{n}"
    return suffix


def _column_value(key: str, value):
    """A sidecar value checked against its store column's type and length; raises Rejected naming the key."""
    table = contract.dmp_patient if key in PATIENT_KEYS else contract.dmp_document
    column = table.c[key]
    kind = column.type
    bad = Rejected("SIDECAR_INVALID", f"{key}: not a valid {type(kind).__name__.lower()}")
    if value is None:
        return None
    if isinstance(kind, sa.Boolean):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(kind, sa.Integer):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 31:
            raise bad
        return value
    if not isinstance(value, str):
        raise bad
    try:
        if isinstance(kind, sa.DateTime):  # the store's local time (Europe/Paris); with an offset, converted
            parsed = dt.datetime.fromisoformat(value)
            return parsed.astimezone(hl7msg.PARIS).replace(tzinfo=None) if parsed.tzinfo else parsed
        if isinstance(kind, sa.Date):
            return dt.date.fromisoformat(value)
    except ValueError:
        raise bad from None
    if not value.strip() or (kind.length and len(value) > kind.length):
        raise Rejected("SIDECAR_INVALID", f"{key}: empty or longer than the store contract's {kind.length} characters")
    return value


def _from_pdf(content: bytes, document: dict) -> tuple:
    if not content.startswith(b"%PDF-"):
        raise Rejected("NOT_A_PDF", "a .pdf file that does not start with %PDF-")
    if not document.get("document_id"):
        raise Rejected("SIDECAR_INVALID", "a PDF's sidecar must give its document_id")
    version = document.get("version") or 1
    document_id = document["document_id"]
    # Its id in the intake's own table: the store key. Version 1 is an initial transmission (refused if the
    # document was received before); a version above 1 replaces the one before it, which must have been received.
    if version == 1:
        return INITIAL, f"{document_id}^1", None, document_id
    return REPLACEMENT, f"{document_id}^{version}", f"{document_id}^{version - 1}", None


def _from_cda(content: bytes, patient: dict, document: dict) -> tuple:
    """The CDA's own ids and header, merged into the sidecar's fields: a sidecar value that differs from the
    CDA's is a contradiction (refused); the sidecar fills only what the CDA leaves out."""
    try:
        root = parse_untrusted(content).getroot()
    except ValueError as exc:
        raise Rejected("NOT_A_CDA", str(exc)) from None  # says where, never what
    if root.tag != f"{{{V3_NS}}}ClinicalDocument":
        raise Rejected("NOT_A_CDA", "the root element is not an HL7 v3 ClinicalDocument")
    ids = root.findall("v3:id", _NS)
    if len(ids) != 1 or not ids[0].get("root"):
        raise Rejected("NOT_A_CDA", "the CDA has no ClinicalDocument/id")
    for key in ("document_id", "version"):
        if key in document:
            raise Rejected("SIDECAR_INVALID", f"{key}: a CDA's own ids say it (id, setId, relatedDocument)")
    for source, target in ((_cda_patient(root), patient), (hl7msg.cda_document(root), document)):
        for key, value in source.items():
            if value is None or key not in PATIENT_KEYS + DOCUMENT_KEYS:
                continue
            if target.get(key) is not None and target[key] != value:
                raise Rejected("CONTRADICTION", f"the sidecar's {key} differs from the CDA's")
            target[key] = value
    if patient.get("ins_matricule") and "identity_status" not in patient:
        # The référentiel INS: a document carries the INS only for a qualified identity.
        patient["identity_status"] = "QUAL"
    parent = hl7msg._cda_parent(root)
    return (REPLACEMENT if parent else INITIAL), hl7msg._ii(ids[0]), parent, hl7msg._set_id(root)


def _cda_patient(root) -> dict:
    """The dmp_patient columns the CDA's recordTarget gives, read as the run compares them (cda.passthrough_cda)."""
    role = root.find("v3:recordTarget/v3:patientRole", _NS)
    if role is None:
        return {}
    ins = [(i.get("root"), i.get("extension")) for i in role.findall("v3:id", _NS) if i.get("root") in INS_OIDS]
    person = role.find("v3:patient", _NS)

    def text(xpath: str) -> str | None:
        found = person.xpath(xpath, namespaces=_NS) if person is not None else []
        return " ".join("".join(found[0].itertext()).split()) or None if found else None

    def attribute(xpath: str, name: str) -> str | None:
        found = person.xpath(xpath, namespaces=_NS) if person is not None else []
        return found[0].get(name) or None if found else None

    born = attribute("v3:birthTime", "value")
    try:
        birth_date = dt.date(int(born[:4]), int(born[4:6]), int(born[6:8])) if born else None
    except ValueError:
        raise Rejected("NOT_A_CDA", "the patient's birthTime is not a date") from None
    sexes = {code: sex for sex, (code, _) in GENDERS.items()}
    return {
        "ins_oid": ins[0][0] if len(ins) == 1 else None,
        "ins_matricule": ins[0][1] if len(ins) == 1 else None,
        "birth_family_name": text("v3:name/v3:family[@qualifier='BR']"),
        "birth_given_names": text("v3:name/v3:given[not(@qualifier)]") or text("v3:name/v3:given[@qualifier='BR']"),
        "used_family_name": text("v3:name/v3:family[@qualifier='CL']"),
        "used_given_name": text("v3:name/v3:given[@qualifier='CL']"),
        "sex": sexes.get(attribute("v3:administrativeGenderCode", "code")),
        "birth_date": birth_date,
        "birth_place_code": text("v3:birthplace/v3:place/v3:addr/v3:county"),
    }


# --- the command ------------------------------------------------------------------------------------


def run(settings, store_url: str, *, once: bool = False) -> list[Outcome]:
    """`intake folder`: one sweep (`once`), or sweep every poll_seconds until SIGTERM/SIGINT, with a heartbeat
    and figures written for `status` every figures_interval_seconds."""
    writer = Writer(store_url)
    writer.create_tables()
    instance = f"{FOLDER}{socket.gethostname()}:{str(settings.path)[-120:]}"
    recorder = Recorder(writer.engine, instance)
    folder = Folder(settings, writer, recorder)
    folder.prepare()
    if once:
        outcomes = folder.sweep()
        recorder.flush(heartbeat=False)
        return outcomes
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    recorder.start()
    log.info("intake folder: watching %s every %g s", settings.path, settings.poll_seconds)
    flushed = time.monotonic()
    while not stop.is_set():
        try:
            folder.sweep()
        except Exception:  # a defect of ours: logged, and the watcher goes on (the next sweep tries again)
            log.exception("intake folder: the sweep ended by an internal error")
        if time.monotonic() - flushed >= settings.figures_interval:
            recorder.flush()
            flushed = time.monotonic()
        stop.wait(settings.poll_seconds)
    recorder.flush(stopping=True)
    log.info("intake folder: stopped")
    return []
