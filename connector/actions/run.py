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
from connector.actions import corrections
from connector.actions.audit import purge as purge_audit
from connector.actions.context import describe_url, open_settings_ledger, open_store
from connector.actions.rebuild import refuse_a_lost_ledger
from connector.actions.write_back import retry_write_backs
from connector.config import ConfigError, Settings
from connector.deliver import Deliverer, Result, short_error
from connector.errors import LedgerError
from connector.dmp.client import DmpClient
from connector.logs import RunProgress, StopRequested
from connector.ledger.repo import Ledger, SubmissionDoc, SubmissionRecord, utcnow
from connector.ledger.schema import FAILED, ITI57, PENDING, REPLACE, SKIPPED, WITHDRAW
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


_SKIP_HINTS = {"SITE_UNKNOWN": " (FINESS géo not in structure.sites: a typo?)",
               "TYPE_NOT_ALLOWED": " (type code outside JDV_J07 or rules.allowed_type_codes)"}


@dataclass
class Summary:
    run_id: int
    mode: str
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    counts: collections.Counter = field(default_factory=collections.Counter)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    warnings: collections.Counter = field(default_factory=collections.Counter)  # eligible documents warned about
    newly_skipped: collections.Counter = field(default_factory=collections.Counter)  # recorded anew by this run
    # documents of the submission sets this run resumed: counted by their outcome, not again by the scan that meets
    # them FED, IN_PROGRESS… (a replayed document was counted twice: fed, and skipped ALREADY_FED)
    resumed: set = field(default_factory=set, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    unreachable: str | None = None  # the first cause, when the DMP could not be reached (connection)
    tls_refused: str | None = None  # the first cause, when the TLS handshake with the DMP failed
    attention_reasons: tuple[str, ...] = ()  # skip reasons that need a human here (monitoring.attention_skip_reasons)
    write_back_failures: int = 0  # documents whose dmp_feed_status row could not be written (retried next run)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    @property
    def status(self) -> str:
        """As recorded in the ledger's runs: done, or why the DMP could not be reached."""
        return "tls_refused" if self.tls_refused else "unreachable" if self.unreachable else "done"

    @property
    def attention(self) -> list[str]:
        """What a human must look at after this run (the reasons of exit code 1)."""
        found = []
        if self.counts["failed"] or self.counts["error"]:
            found.append(f"{self.counts['failed'] + self.counts['error']} document(s) failed")
        found += [f"{self.newly_skipped[r]} document(s) newly skipped {r}{_SKIP_HINTS.get(r, '')}"
                  for r in self.attention_reasons if self.newly_skipped[r]]
        if self.write_back_failures:
            found.append(f"{self.write_back_failures} dmp_feed_status row(s) not written (retried by the next run)")
        return found

    @property
    def exit_code(self) -> int:
        """The README's exit codes: 6 TLS with the DMP refused, 4 DMP unreachable, 1 something needs a human."""
        return 6 if self.tls_refused else 4 if self.unreachable else 1 if self.attention else 0

    @property
    def documents(self) -> dict:
        """Every count, zeros included (a JSON reader gets the same keys whatever happened)."""
        c = self.counts
        return {k: c[k] for k in ("fed", "deferred", "failed", "withdrawn", "claimed_elsewhere", "error")}

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "mode": self.mode, "status": self.status, "exit_code": self.exit_code,
                "duration_s": round(self.duration, 3), "documents": self.documents,
                "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(sorted(self.skipped.items())),
                "warnings_by_reason": dict(sorted(self.warnings.items())),
                "dmp_unreachable": self.unreachable, "tls_refused": self.tls_refused, "attention": self.attention}

    def headline(self, status: str | None = None, mark: str = "#") -> str:
        c = self.counts
        return (f"run {mark}{self.run_id} {status or self.status} in {self.duration:.1f}s: {c['fed']} fed, "
                f"{c['deferred']} deferred, {c['failed'] + c['error']} failed, {sum(self.skipped.values())} skipped")

    def text(self) -> str:
        lines = [self.headline()]
        lines += [f"  skipped {reason:<24} {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"  warning {reason:<24} {n}" for reason, n in sorted(self.warnings.items())]
        if self.tls_refused:
            lines.append(f"  TLS with the DMP refused: {self.tls_refused}")
        if self.unreachable:
            lines.append(f"  DMP unreachable: {self.unreachable}")
        lines += [f"  needs a human: {a}" for a in self.attention]
        return "\n".join(lines)


def run(settings: Settings, *, mode: str = "run", progress=None, under_lock=None) -> Summary:
    """`under_lock(ledger)`, if given, runs once the lock is held, before the run (replay's requeue: changing
    the queue while another run works on it would race that run)."""
    ledger = open_settings_ledger(settings, create=True)
    store = open_store(settings)
    try:
        store.ensure_write_back_table()
    except Exception as exc:  # feeding goes on: the rows are written once it exists (write-back retries)
        log.error("dmp_feed_status cannot be created in the store (%s): create it, or set store.write_back = false",
                  short_error(exc))
    with run_lock(ledger, settings.state_dir, settings.ledger.instance):
        refuse_a_lost_ledger(ledger, store)  # a ledger that has fed nothing over a store fed already
        if under_lock is not None:
            under_lock(ledger)
        return _run_locked(settings, ledger, store, mode, progress or RunProgress())


def schematron_process(settings: Settings) -> SchematronProcess | None:
    """The process checking CDAs against the schematron beside the run: only for Saxon (the "python" engine
    runs in the run's own process, without one), and only if CDAs are checked at all."""
    validation = settings.validation
    if validation.process and validation.schematron != "off" and validation.engine == "saxon":
        return SchematronProcess()
    return None


def _run_locked(settings: Settings, ledger: Ledger, store: Store, mode: str, progress) -> Summary:
    if settings.certificates is None:
        raise ConfigError("certificates: missing ([certificates.auth_cli] and [certificates.sign] are needed to run)")
    sign = _usable_credential(settings.certificates.sign, "sign")
    auth = _usable_credential(settings.certificates.auth_cli, "auth_cli")
    ledger.record_certificates({purpose: c.certificate.not_valid_after_utc.replace(tzinfo=None)
                                for purpose, c in (("auth_cli", auth), ("sign", sign))})
    client = DmpClient(settings.dmp, auth, settings.certificates.auth_cli.password())
    purge_audit(ledger, settings.audit_retention_days)
    summary = Summary(ledger.start_run(mode), mode, attention_reasons=settings.monitoring.attention_skip_reasons)
    log.info("run %d started (%s): instance %s, configuration %s, ledger %s, store %s", summary.run_id, mode,
             settings.ledger.instance, settings.source or "(defaults)", describe_url(ledger.engine), describe_url(store.engine))
    retry_write_backs(ledger, store)
    progress.begin(_store_total(store))
    deliverer = Deliverer(settings, ledger, store, client, summary.run_id)
    # One submission set prepared ahead of the senders: queuing more held more memory (100,000 store: peak
    # 154 -> 148 MB) and fed no faster, the main thread that prepares being the bottleneck.
    slots = threading.BoundedSemaphore(settings.dmp.max_in_flight + 1)
    owner, lease = settings.ledger.instance, dt.timedelta(minutes=settings.ledger.lease_minutes)
    status, failure = "done", None
    checker = schematron_process(settings)
    try:
        with ThreadPoolExecutor(settings.dmp.max_in_flight, thread_name_prefix="send") as pool:

            def submit(record: SubmissionRecord, prepared: prepare.Prepared, patient: Patient, withdraw=None) -> None:
                slots.acquire()
                future = pool.submit(deliverer.deliver_or_settle, record, prepared, patient, withdraw)
                future.add_done_callback(lambda f: (slots.release(), _count(summary, record, f), progress.settled(summary)))

            def submit_withdrawal(record: SubmissionRecord, build, patient: Patient) -> None:
                slots.acquire()
                future = pool.submit(deliverer.withdraw_or_settle, record, build, patient)
                future.add_done_callback(lambda f: (slots.release(), _count(summary, record, f), progress.settled(summary)))

            fix = _Corrections(client, sign, submit_withdrawal, owner, lease)

            while not deliverer.down and (claimed := ledger.claim_open_submissions(owner, lease, summary.run_id)):
                for sub_id in claimed:
                    if deliverer.down:  # the others keep their lease: this instance takes them back next run
                        break
                    record = ledger.submission(sub_id)
                    if record.kind == ITI57:
                        corrections.resume_withdrawal(settings, ledger, store, sign, summary, record, submit_withdrawal)
                    else:
                        _resume(settings, ledger, store, sign, summary, record, submit, checker, deliverer)
            # A patient's CDAs are checked by the schematron process while the main thread finishes the
            # patients before it. Asked to stop, it takes no new patient and finishes those it has taken.
            started = collections.deque()

            def finish(keep: int) -> None:
                while len(started) > keep:
                    _finish_patient(settings, ledger, sign, summary, started.popleft(), submit, owner, lease)

            try:
                for group in scan(store, ledger, settings):
                    if deliverer.down:
                        log.error("the DMP cannot be reached (%s): no new patient is taken; the next run goes on",
                                  deliverer.down.message)
                        break
                    progress.patient(summary)  # may raise StopRequested (daemon stopping)
                    progress.scanned(len(group))
                    started.append(_start_patient(settings, ledger, summary, group, checker, fix))
                    finish(keep=LOOKAHEAD if checker else 0)  # without that process, nothing to wait for
            except StopRequested:
                finish(keep=0)
                raise
            finish(keep=0)
    except StopRequested:
        status = "interrupted"  # asked to stop (SIGTERM): what is open is settled by the next run
        raise
    except BaseException as exc:
        status, failure = "failed", short_error(exc)
        raise
    finally:
        summary.write_back_failures = deliverer.write_back_failures
        if checker is not None:
            checker.close()
        progress.close(summary)
        summary.duration = time.monotonic() - summary.started
        if status == "done":
            status = summary.status
        message = failure or summary.tls_refused or summary.unreachable
        ledger.finish_run(summary.run_id, status, {**summary.counts, **{f"skipped:{k}": v for k, v in summary.skipped.items()},
                                                   **{f"newly_skipped:{k}": v for k, v in summary.newly_skipped.items()},
                                                   **{f"warning:{k}": v for k, v in summary.warnings.items()}},
                          message=message and message[:1000])
        _log_end(summary, status)
    return summary


def _store_total(store: Store) -> int | None:
    """The documents of the store, for the progress bar and ETA (a count, no row read); None if it fails."""
    import sqlalchemy as sa

    from connector.store import dmp_document

    try:
        with store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(dmp_document)).scalar()
    except sa.exc.SQLAlchemyError:
        return None


def _log_end(summary: Summary, status: str) -> None:
    """The run's human summary line, at the level of what it found; then what needs a human, one line each."""
    level = logging.ERROR if status != "done" else logging.WARNING if summary.attention else logging.INFO
    log.log(level, "%s", summary.headline(status, mark=""))  # "run 12 done in …", as "run 12 started"
    for what in summary.attention:
        log.warning("needs a human: %s", what)


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
    if result.cause == "tls" and summary.tls_refused is None:
        summary.tls_refused = result.message
    elif result.cause == "unreachable" and summary.unreachable is None:
        summary.unreachable = result.message
    if record.kind == ITI57 and result.state == "FED":  # a withdrawal from the DMP is not a feeding
        summary.add("withdrawn_from_dmp", len(record.documents))
        return
    summary.add({"FED": "fed", "DEFERRED": "deferred", "FAILED": "failed", "SKIPPED": "withdrawn"}[result.state],
                len(record.documents))


@dataclass(frozen=True)
class _Corrections:
    """What a run needs to correct documents already in the DMP (actions/corrections.py)."""

    client: DmpClient
    sign: object
    submit_withdrawal: object
    owner: str
    lease: dt.timedelta


def _start_patient(settings, ledger: Ledger, summary: Summary, group: list[Decision], checker,
                   fix: _Corrections | None = None):
    """Record the patient's decisions, build its CDAs and start their checks; returns what finishes it.
    Withdrawals are journaled and sent at once; replacements first ask the registry which entry they replace."""
    rows = []
    for d in group:
        if d.eligible:
            for warning in d.warnings:
                log.warning("document %s v%d: %s", d.document_id, d.version, warning)
                summary.warnings[warning.split(":", 1)[0]] += 1
            rows.append(dict(document_id=d.document_id, version=d.version, patient_id=d.patient_id, state=PENDING,
                             finess_geo=d.document.finess_geo, type_code=d.document.type_code))
        else:
            if (d.document_id, d.version) not in summary.resumed:
                summary.skipped[d.reason] += 1
            if d.record_skip and d.version is not None:
                rows.append(dict(document_id=d.document_id, version=d.version, patient_id=d.patient_id or "?",
                                 state=SKIPPED, reason=d.reason, detail=d.detail,
                                 finess_geo=d.document.finess_geo if d.document else None,
                                 type_code=d.document.type_code if d.document else None))
    summary.newly_skipped.update(ledger.record_decisions(rows, summary.run_id))
    eligible = [d for d in group if d.eligible and d.action != WITHDRAW]
    if fix is not None:
        for d in group:
            if d.eligible and d.action == WITHDRAW:
                _withdraw(settings, ledger, summary, d, fix)
    revisions = {}
    if fix is not None and any(d.action == REPLACE for d in eligible):
        revisions, waiting = corrections.revisions(settings, fix.client, fix.sign, eligible, ledger, summary.run_id)
        for d in waiting:
            log.warning("document %s v%d: the DMP could not say which entry it replaces; next run", d.document_id,
                        d.version)
            summary.skipped[corrections.LOOKUP_FAILED] += 1
        eligible = [d for d in eligible if d not in waiting]
    return prepare.start_patient(settings, eligible, checker, revisions)


def _withdraw(settings, ledger: Ledger, summary: Summary, d: Decision, fix: _Corrections) -> None:
    """Journal a withdrawal the store asks for (CANCELLED) and send it."""
    record = corrections.journal_withdrawal(settings, ledger, state=d.replaces, patient_id=d.document.patient_id,
                                            finess_geo=d.document.finess_geo, reason=d.detail or "withdrawn",
                                            run_id=summary.run_id, owner=fix.owner, lease=fix.lease)
    if record is None:
        summary.add("claimed_elsewhere", 1)
        return
    testhooks.point("after_journal")
    build = corrections.withdrawal_builder(settings, fix.sign, record, d.document, d.patient)
    try:
        build(record.documents[0].entry_uuid)
    except PayloadError as exc:
        ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code=exc.reason,
                                 error_message=str(exc), reason=exc.reason)
        summary.add("failed", 1)
        return
    fix.submit_withdrawal(record, build, d.patient)


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
        submission_set_uid=ids.submission_set_unique_id(oid_root, batch.dmp_keys),
        entry_uuid=ids.submission_set_entry_uuid(oid_root, batch.dmp_keys),
        patient_id=batch.patient.patient_id,
        finess_geo=batch.site.finess_geo,
        submission_time=utcnow(),
        docs=[corrections.journal_doc(oid_root, d, uid, batch.revisions.get(d.key), rules.masking(d))
              for d, uid, _ in batch.documents],
        note=corrections.replacement_note(batch),
        run_id=summary.run_id,
        owner=owner,
        lease=lease,
    )
    if record is None:  # another instance holds this submission set
        summary.add("claimed_elsewhere", len(batch.documents))
        return
    testhooks.point("after_journal")
    _prepare_and_submit(settings, ledger, sign, summary, record, batch.site, batch.patient, batch.documents, submit,
                        revisions=batch.revisions)


def _prepare_and_submit(settings, ledger, sign, summary, record, site, patient, batch, submit, withdraw=None,
                        revisions=None) -> None:
    revisions = revisions or {}
    # a replacement's entry is described with its CDA versionNumber (its ids derive from it)
    documents = [(prepare.dmp_document(d, revisions.get(d.key)), uid, xml) for d, uid, xml in batch]
    try:
        prepared = prepare.submission(settings, sign, site=site, patient=patient, documents=documents,
                                      submission_set_uid=record.submission_set_uid,
                                      submission_set_entry_uuid=record.entry_uuid,
                                      submission_time=record.submission_time,
                                      replaces={uid: revisions[d.key].replaces for d, uid, _ in batch
                                                if d.key in revisions})
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
            checker, deliverer: Deliverer) -> None:
    """Rebuild a journaled submission from the store with its recorded ids and time, then deliver it; if its
    documents are no longer eligible (opposition, death… since it was journaled) it is only settled, never sent."""
    batch, patient, site, withdraw, revisions = [], None, settings.structure.site(record.finess_geo), None, {}
    summary.resumed.update((d.document_id, d.version) for d in record.documents)
    for doc in record.documents:
        item = store.get(doc.document_id, doc.version)
        problem = None
        if not isinstance(item, Candidate) or item.patient is None:
            problem = "the document or its patient is no longer in the store"
        else:
            if doc.masking is not None:  # as journaled (an unmask due since is not in the store's flags)
                item = Candidate(rules.with_masking(item.document, doc.masking), item.patient)
            skip = rules.check_record(item.document, item.patient, settings, already_fed=False)
            if skip is not None and withdraw is None:
                withdraw = (skip.reason, f"document {doc.document_id} v{doc.version}: {skip.detail}")
            if skip is not None and record.attempts == 0:  # never sent: nothing to settle with the DMP
                ledger.withdraw_submission(record.id, *withdraw)
                summary.skipped[str(skip.reason)] += len(record.documents)
                return
            revision = corrections.revision_of(doc)
            try:
                uid, xml = prepare.document_cda(settings, item.document, item.patient, site,
                                                store.content(item.document, settings.rules.max_document_bytes),
                                                checker, revision=revision)
                batch.append((item.document, uid, xml))
                if revision is not None:
                    revisions[item.document.key] = revision
                patient = item.patient
            except (PayloadError, ContentRefused) as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"content unreadable: {exc.strerror}"
        if problem:
            problem = f"document {doc.document_id} v{doc.version}: {problem}"
            if record.attempts > 0 and isinstance(item, Candidate) and item.patient is not None and site is not None:
                # Sent before: the DMP may hold it. Ask (ITI-18) before calling the submission impossible.
                try:
                    vihf = prepare.lookup_vihf(settings, sign, site=site, patient=item.patient, documents=[item.document])
                except PayloadError as exc:
                    problem += f"; not looked up in the DMP: {exc}"
                else:
                    result = deliverer.settle_unbuildable(record, vihf, item.patient, problem)
                    summary.add({"FED": "fed", "DEFERRED": "deferred", "FAILED": "failed"}[result.state],
                                len(record.documents))
                    return
            ledger.settle_submission(record.id, state=FAILED, outcome="invalid", error_code="RESEND_IMPOSSIBLE",
                                     error_message=problem, reason="RESEND_IMPOSSIBLE")
            summary.add("failed", len(record.documents))
            return
    _prepare_and_submit(settings, ledger, sign, summary, record, site, patient, batch, submit, withdraw,
                        revisions=revisions)
