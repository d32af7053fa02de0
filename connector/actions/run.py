"""`run`: settle what earlier runs left open, scan the store, journal and deliver new submission sets.

scan → rules → CDA (built, validated; the schematron in a process of its own, two patients ahead) → group
per patient (capped) → journal ids (committed) → sign, assemble, validate → send (a bounded number in
flight) → classify → FED / DEFERRED / FAILED + write-back.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from connector import prepare, rules, testhooks
from connector.actions.audit import purge as purge_audit
from connector.actions.context import open_settings_ledger, open_store
from connector.actions.rebuild import refuse_a_lost_ledger
from connector.config import ConfigError, Settings
from connector.deliver import Deliverer, Result
from connector.errors import LedgerError
from connector.dmp.client import DmpClient
from connector.logs import RunProgress, StopRequested
from connector.ledger.repo import Ledger, SubmissionDoc, SubmissionRecord, utcnow
from connector.ledger.schema import FAILED, PENDING, SKIPPED
from connector.payload import ids
from connector.payload.errors import PayloadError
from connector.payload.schematron_process import SchematronProcess
from connector.runlock import run_lock
from connector.scan import Decision, scan
from connector.store import Candidate, ContentRefused, Patient, Store
from connector.trust.certs import CertificateError, check_credential, load_credential

log = logging.getLogger("connector.run")

BUILD_ERROR = "BUILD_ERROR"  # an unexpected error while building a request: a defect to report
LOOKAHEAD = 2  # patients whose CDAs are being checked while the main thread submits the one before


@dataclass
class Summary:
    run_id: int
    mode: str
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    counts: collections.Counter = field(default_factory=collections.Counter)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    warnings: collections.Counter = field(default_factory=collections.Counter)  # eligible documents warned about
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "mode": self.mode, "duration_s": round(self.duration, 3),
                "documents": dict(self.counts), "skipped_by_reason": dict(self.skipped),
                "warnings_by_reason": dict(self.warnings)}

    def text(self) -> str:
        c = self.counts
        lines = [f"run #{self.run_id} finished in {self.duration:.1f}s: "
                 f"{c['fed']} fed, {c['deferred']} deferred, {c['failed']} failed, {sum(self.skipped.values())} skipped"]
        lines += [f"  skipped {reason:<24} {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"  warning {reason:<24} {n}" for reason, n in sorted(self.warnings.items())]
        return "\n".join(lines)


def run(settings: Settings, *, mode: str = "run", progress=None, under_lock=None) -> Summary:
    """`under_lock(ledger)`, if given, runs once the lock is held, before the run (replay's requeue: changing
    the queue while another run works on it would race that run)."""
    ledger = open_settings_ledger(settings)
    store = open_store(settings)
    store.ensure_write_back_table()
    with run_lock(ledger, settings.state_dir, settings.ledger.instance):
        refuse_a_lost_ledger(ledger, store)  # a ledger that has fed nothing over a store fed already
        if under_lock is not None:
            under_lock(ledger)
        return _run_locked(settings, ledger, store, mode, progress or RunProgress())


def _run_locked(settings: Settings, ledger: Ledger, store: Store, mode: str, progress) -> Summary:
    if settings.certificates is None:
        raise ConfigError("certificates: missing ([certificates.auth_cli] and [certificates.sign] are needed to run)")
    sign = _usable_credential(settings.certificates.sign, "sign")
    auth = _usable_credential(settings.certificates.auth_cli, "auth_cli")
    client = DmpClient(settings.dmp, auth, settings.certificates.auth_cli.password())
    purge_audit(ledger, settings.audit_retention_days)
    summary = Summary(ledger.start_run(mode), mode)
    log.info("run %d started (%s)", summary.run_id, mode)
    deliverer = Deliverer(settings, ledger, store, client, summary.run_id)
    # One submission set prepared ahead of the senders: queuing more held more memory (100,000 store: peak
    # 154 -> 148 MB) and fed no faster, the main thread that prepares being the bottleneck.
    slots = threading.BoundedSemaphore(settings.dmp.max_in_flight + 1)
    owner, lease = settings.ledger.instance, dt.timedelta(minutes=settings.ledger.lease_minutes)
    status = "done"
    checker = SchematronProcess() if settings.validation.process and settings.validation.schematron != "off" else None
    try:
        with ThreadPoolExecutor(settings.dmp.max_in_flight, thread_name_prefix="send") as pool:

            def submit(record: SubmissionRecord, prepared: prepare.Prepared, patient: Patient, withdraw=None) -> None:
                slots.acquire()
                future = pool.submit(deliverer.deliver_or_settle, record, prepared, patient, withdraw)
                future.add_done_callback(lambda f: (slots.release(), _count(summary, record, f), progress.settled(summary)))

            while claimed := ledger.claim_open_submissions(owner, lease, summary.run_id):
                for sub_id in claimed:
                    _resume(settings, ledger, store, sign, summary, ledger.submission(sub_id), submit, checker)
            # A patient's CDAs are checked by the schematron process while the main thread finishes the
            # patients before it. Asked to stop, it takes no new patient and finishes those it has taken.
            started = collections.deque()

            def finish(keep: int) -> None:
                while len(started) > keep:
                    _finish_patient(settings, ledger, sign, summary, started.popleft(), submit, owner, lease)

            try:
                for group in scan(store, ledger, settings):
                    progress.patient(summary)  # may raise StopRequested (daemon stopping)
                    started.append(_start_patient(settings, ledger, summary, group, checker))
                    finish(keep=LOOKAHEAD if checker else 0)  # without that process, nothing to wait for
            except StopRequested:
                finish(keep=0)
                raise
            finish(keep=0)
    except StopRequested:
        status = "interrupted"  # asked to stop (SIGTERM): what is open is settled by the next run
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        if checker is not None:
            checker.close()
        progress.close(summary)
        summary.duration = time.monotonic() - summary.started
        ledger.finish_run(summary.run_id, status, {**summary.counts, **{f"skipped:{k}": v for k, v in summary.skipped.items()},
                                                   **{f"warning:{k}": v for k, v in summary.warnings.items()}})
        log.info("run %d %s in %.1fs: %s", summary.run_id, status, summary.duration, dict(summary.counts))
    return summary


def _usable_credential(cert_settings, purpose: str):
    """Load a certificate once for the run; refuse to start with an unusable one (expired, wrong usage)."""
    credential = load_credential(cert_settings)
    findings = check_credential(credential, purpose)
    for f in findings:
        if f.level == "warning":
            log.warning("%s", f.message)
    errors = [f.message for f in findings if f.level == "error"]
    if errors:
        raise CertificateError(f"{cert_settings.p12}: " + "; ".join(errors))
    return credential


def _count(summary: Summary, record: SubmissionRecord, future) -> None:
    try:
        result: Result = future.result()
    except LedgerError as exc:  # the ledger failing (disk full…): said in one line; the run ends with it too
        log.error("submission %s: %s; it stays open and is settled by the next run", record.submission_set_uid, exc)
        summary.add("error", len(record.documents))
        return
    except Exception:
        log.exception("submission %s: unexpected error; settled INTERNAL_ERROR (DEFERRED, FAILED the second time)",
                      record.submission_set_uid)
        summary.add("error", len(record.documents))
        return
    summary.add({"FED": "fed", "DEFERRED": "deferred", "FAILED": "failed", "SKIPPED": "withdrawn"}[result.state],
                len(record.documents))


def _start_patient(settings, ledger: Ledger, summary: Summary, group: list[Decision], checker):
    """Record the patient's decisions, build its CDAs and start their checks; returns what finishes it."""
    rows = []
    for d in group:
        if d.eligible:
            if d.warning:
                log.warning("document %s v%d: %s", d.document_id, d.version, d.warning)
                summary.warnings[d.warning.split(":", 1)[0]] += 1
            rows.append(dict(document_id=d.document_id, version=d.version, patient_id=d.patient_id, state=PENDING,
                             finess_geo=d.document.finess_geo, type_code=d.document.type_code))
        else:
            summary.skipped[d.reason] += 1
            if d.record_skip and d.version is not None:
                rows.append(dict(document_id=d.document_id, version=d.version, patient_id=d.patient_id or "?",
                                 state=SKIPPED, reason=d.reason, detail=d.detail,
                                 finess_geo=d.document.finess_geo if d.document else None,
                                 type_code=d.document.type_code if d.document else None))
    ledger.record_decisions(rows, summary.run_id)
    return prepare.start_patient(settings, [d for d in group if d.eligible], checker)


def _finish_patient(settings, ledger: Ledger, sign, summary: Summary, plan, submit, owner, lease) -> None:
    """Once its CDAs are checked: record those that failed, journal and submit the others' submission sets."""
    failures, batches = plan()
    for d, exc in failures:
        log.warning("document %s v%d: %s", d.document_id, d.version, exc.reason)
        ledger.fail_documents([(d.document_id, d.version)], exc.reason, str(exc), summary.run_id, d.patient_id)
        summary.add("failed")
    for batch in batches:
        _journal_and_submit(settings, ledger, sign, summary, batch, submit, owner, lease)


def _journal_and_submit(settings, ledger: Ledger, sign, summary: Summary, batch: prepare.Batch, submit,
                        owner, lease) -> None:
    oid_root = settings.structure.oid_root
    record = ledger.journal_submission(
        submission_set_uid=ids.submission_set_unique_id(oid_root, batch.keys),
        entry_uuid=ids.submission_set_entry_uuid(oid_root, batch.keys),
        patient_id=batch.patient.patient_id,
        finess_geo=batch.site.finess_geo,
        submission_time=utcnow(),
        docs=[SubmissionDoc(d.document_id, d.version, uid, ids.entry_uuid(oid_root, d.document_id, d.version))
              for d, uid, _ in batch.documents],
        run_id=summary.run_id,
        owner=owner,
        lease=lease,
    )
    if record is None:  # another instance holds this submission set
        summary.add("claimed_elsewhere", len(batch.documents))
        return
    testhooks.point("after_journal")
    _prepare_and_submit(settings, ledger, sign, summary, record, batch.site, batch.patient, batch.documents, submit)


def _prepare_and_submit(settings, ledger, sign, summary, record, site, patient, batch, submit, withdraw=None) -> None:
    try:
        prepared = prepare.submission(settings, sign, site=site, patient=patient, documents=batch,
                                      submission_set_uid=record.submission_set_uid,
                                      submission_set_entry_uuid=record.entry_uuid,
                                      submission_time=record.submission_time)
    except PayloadError as exc:
        log.warning("submission %s: %s", record.submission_set_uid, exc.reason)
        ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code=exc.reason,
                                 error_message=str(exc), reason=exc.reason)
        summary.add("failed", len(batch))
        return
    except Exception as exc:  # a defect of ours: this submission set fails, the batch goes on
        log.exception("submission %s: could not be built", record.submission_set_uid)
        ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code=BUILD_ERROR,
                                 error_message=f"{type(exc).__name__} while building the request", reason=BUILD_ERROR)
        summary.add("failed", len(batch))
        return
    submit(record, prepared, patient, withdraw)


def _resume(settings, ledger: Ledger, store: Store, sign, summary: Summary, record: SubmissionRecord, submit,
            checker) -> None:
    """Rebuild a journaled submission from the store with its recorded ids and time, then deliver it; if its
    documents are no longer eligible (opposition, death… since it was journaled) it is only settled, never sent."""
    batch, patient, site, withdraw = [], None, settings.structure.site(record.finess_geo), None
    for doc in record.documents:
        item = store.get(doc.document_id, doc.version)
        problem = None
        if not isinstance(item, Candidate) or item.patient is None:
            problem = "the document or its patient is no longer in the store"
        else:
            skip = rules.check_record(item.document, item.patient, settings, already_fed=False)
            if skip is not None and withdraw is None:
                withdraw = (skip.reason, f"document {doc.document_id} v{doc.version}: {skip.detail}")
            if skip is not None and record.attempts == 0:  # never sent: nothing to settle with the DMP
                ledger.withdraw_submission(record.id, *withdraw)
                summary.skipped[str(skip.reason)] += len(record.documents)
                return
            try:
                uid, xml = prepare.document_cda(settings, item.document, item.patient, site,
                                                store.content(item.document, settings.rules.max_document_bytes),
                                                checker)
                batch.append((item.document, uid, xml))
                patient = item.patient
            except (PayloadError, ContentRefused) as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"content unreadable: {exc.strerror}"
        if problem:
            ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code="RESEND_IMPOSSIBLE",
                                     error_message=f"document {doc.document_id} v{doc.version}: {problem}",
                                     reason="RESEND_IMPOSSIBLE")
            summary.add("failed", len(record.documents))
            return
    _prepare_and_submit(settings, ledger, sign, summary, record, site, patient, batch, submit, withdraw)
