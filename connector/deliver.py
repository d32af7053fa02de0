"""Deliver one journaled submission set to the DMP and record what happened.

The ids were committed by the ledger before we get here (write-ahead). A submission that was tried before
(crash, unknown outcome, deferred) is first looked up with ITI-18: if the DMP has it, it is FED and nothing is
resent; if the DMP says it does not, it is resent with the very same ids; if the query gets no answer, nothing is
sent: it is DEFERRED (UNKNOWN_OUTCOME) and asked again by a later run. Transient errors are retried in the run (tenacity,
exponential backoff with jitter), then DEFERRED with a doubling delay, then FAILED (EXPIRED) after the lifetime.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

import tenacity

from connector import testhooks
from connector.config import Settings
from connector.dmp.client import DmpClient
from connector.dmp.outcome import Outcome, RegistryError
from connector.errors import LedgerError
from connector.ledger.repo import Ledger, SubmissionRecord, utcnow
from connector.ledger.schema import DEFERRED, FAILED, FED, ITI41, ITI57, SKIPPED, WITHDRAWN
from connector.payload import xds
from connector.prepare import Prepared
from connector.store import Patient, Store
from connector.trust import vihf

log = logging.getLogger("connector.deliver")

EXPIRED = "EXPIRED"
UNKNOWN_OUTCOME = "UNKNOWN_OUTCOME"
TRANSIENT = "TRANSIENT_ERROR"
RESEND_IMPOSSIBLE = "RESEND_IMPOSSIBLE"  # journaled, and can no longer be rebuilt from the store
INTERNAL_ERROR = "INTERNAL_ERROR"  # an unexpected error while delivering: a defect of ours, or the ledger failing
DMP_UNREACHABLE = "DMP_UNREACHABLE"  # nothing reached the DMP: connection refused, timed out, name unknown
TLS_REFUSED = "TLS_REFUSED"  # the TLS handshake failed (certificate not trusted either way, host name, version)
NOT_APPROVED = "DMP_ENTRY_NOT_APPROVED"  # a withdrawal whose entry the DMP does not hold Approved (replaced, absent)


@dataclass(frozen=True)
class Result:
    state: str  # FED, DEFERRED, FAILED
    outcome: str  # accepted, accepted_with_warnings, reconciled, transient, permanent, unknown, expired
    error_code: str | None = None
    cause: str | None = None  # "unreachable" or "tls" when the DMP could not be reached (Outcome.cause)
    message: str | None = None


class Deliverer:
    def __init__(self, settings: Settings, ledger: Ledger, store: Store, client: DmpClient, run_id: int):
        self.settings, self.ledger, self.store, self.client, self.run_id = settings, ledger, store, client, run_id
        # Set when a submission could not reach the DMP after its in-run retries: the run takes no new patient
        # (every one would wait through the same retries) and exits with the DMP's unavailability.
        self.down: Result | None = None
        self.write_back_failures = 0  # documents whose dmp_feed_status row could not be written in this run

    def deliver(self, record: SubmissionRecord, prepared: Prepared, patient: Patient,
                withdraw: tuple[str, str] | None = None) -> Result:
        """Send (or settle) one journaled submission. `withdraw` = (reason, detail) when its documents are no
        longer eligible: it is then only looked up, never sent."""
        ins_cx = xds.ins_cx(patient)
        if record.attempts > 0 or withdraw:
            found = self._lookup(record, prepared, ins_cx) if record.attempts > 0 else False
            if found:
                return self._settle(record, prepared, Result(FED, "reconciled"), "found in the DMP by ITI-18; not resent")
            if found is None:  # sent before, and cannot tell whether it arrived: ask again next run, never send
                return self._defer(record, prepared, _no_reply(), UNKNOWN_OUTCOME)
            if withdraw:
                self.ledger.withdraw_submission(record.id, *withdraw)
                return Result(SKIPPED, "withdrawn", withdraw[0])
        for resend in (False, True):
            outcome = self._send_with_retries(record, prepared)
            if outcome.kind in ("accepted", "accepted_with_warnings"):
                return self._settle(record, prepared, Result(FED, outcome.kind), _warnings(outcome))
            if outcome.kind != "unknown" and not outcome.duplicate_submission:
                break
            # Sent but no reply, or the registry already holds this submission set: ask it.
            found = self._lookup(record, prepared, ins_cx)
            if found:
                return self._settle(record, prepared, Result(FED, "reconciled"), "confirmed by ITI-18 after " + outcome.kind)
            if found is None:  # cannot tell: never resend blind; the next run asks again
                return self._defer(record, prepared, outcome, UNKNOWN_OUTCOME)
            if outcome.kind != "unknown" or resend:
                break
            # Not in the DMP: resend at once, with the very same ids (once in this run).
        if outcome.kind in ("transient", "unknown"):
            reason = (UNKNOWN_OUTCOME if outcome.kind == "unknown" else
                      {"tls": TLS_REFUSED, "unreachable": DMP_UNREACHABLE}.get(outcome.cause, TRANSIENT))
            result = self._defer(record, prepared, outcome, reason)
            if outcome.cause and self.down is None:
                self.down = result
            return result
        code = _first_code(outcome) or "DMP_REJECTED"
        return self._settle(record, prepared, Result(FAILED, "permanent", code), cause_of(outcome))

    def deliver_or_settle(self, record: SubmissionRecord, prepared: Prepared, patient: Patient,
                          withdraw: tuple[str, str] | None = None) -> Result:
        """`deliver`, and if an unexpected error escapes it, settle the submission rather than leave it SUBMITTING
        (the error is raised again, for the run to count it): DEFERRED the first time (a glitch; it may have been
        sent, so the next run asks ITI-18 first), FAILED INTERNAL_ERROR when it happens again (a defect)."""
        try:
            return self.deliver(record, prepared, patient, withdraw)
        except LedgerError:
            raise  # the ledger itself fails (disk full…): nothing can be recorded; a later run settles it
        except Exception as exc:
            self._settle_unexpected(record, prepared, exc)
            raise

    def settle_unbuildable(self, record: SubmissionRecord, vihf, patient: Patient, problem: str) -> Result:
        """A submission sent before that can no longer be rebuilt (its content gone, its CDA now invalid…): the DMP
        may hold it. Found by ITI-18: FED; not found: FAILED RESEND_IMPOSSIBLE; no answer: DEFERRED, asked again."""
        lookup = Prepared(record.submission_set_uid, None, {}, vihf, b"", {})
        found = self._lookup(record, lookup, xds.ins_cx(patient))
        if found:
            return self._settle(record, lookup, Result(FED, "reconciled"),
                                f"found in the DMP by ITI-18; not resent ({problem})")
        if found is None:
            return self._defer(record, lookup, _no_reply(), UNKNOWN_OUTCOME)
        return self._settle(record, lookup, Result(FAILED, "invalid", RESEND_IMPOSSIBLE), problem)

    def withdraw(self, record: SubmissionRecord, build, patient: Patient) -> Result:
        """Send (or settle) one journaled withdrawal (ITI-57, Deleted) of one document version. `build(entryUUID)`
        gives its request for the entry to withdraw. The registry is asked first (ITI-18 GetDocuments by the
        version's uniqueId), before every send: the Approved entry is the one withdrawn (its entryUUID as the
        registry gives it); already Deleted, nothing is sent; no answer, nothing is sent (DEFERRED)."""
        doc = record.documents[0]
        prepared = build(doc.entry_uuid)
        ins_cx = xds.ins_cx(patient)
        for resend in (False, True):
            entries = self._entries(record, prepared, doc.unique_id, ins_cx)
            if entries is None:
                return self._defer(record, prepared, _no_reply(), UNKNOWN_OUTCOME)
            status = {e.availability: e for e in entries}
            if "Deleted" in status:
                return self._settle_withdrawal(record, prepared, "reconciled" if resend or record.attempts else "done",
                                               "Deleted in the DMP (ITI-18)")
            if "Approved" not in status:
                found = ", ".join(sorted(filter(None, status))) or "no entry"
                return self._settle(record, prepared, Result(FAILED, "permanent", NOT_APPROVED),
                                    f"the DMP holds {found} for this version: nothing to withdraw")
            target = status["Approved"].entry_uuid
            if target != prepared_target(prepared):
                prepared = build(target)
            outcome = self._send_with_retries(record, prepared, ITI57)
            if outcome.accepted:
                return self._settle_withdrawal(record, prepared, outcome.kind, "withdrawn (ITI-57)")
            if outcome.kind != "unknown" or resend:
                break
            # Sent, no reply: the registry is asked again before anything is resent.
        if outcome.kind in ("transient", "unknown"):
            return self._defer(record, prepared, outcome,
                               UNKNOWN_OUTCOME if outcome.kind == "unknown" else TRANSIENT)
        return self._settle(record, prepared, Result(FAILED, "permanent", _first_code(outcome) or "DMP_REJECTED"),
                            cause_of(outcome))

    def withdraw_or_settle(self, record: SubmissionRecord, build, patient: Patient) -> Result:
        """`withdraw`, settled as `deliver_or_settle` settles an unexpected error."""
        try:
            return self.withdraw(record, build, patient)
        except LedgerError:
            raise
        except Exception as exc:
            self._settle_unexpected(record, build(record.documents[0].entry_uuid), exc)
            raise

    def _entries(self, record: SubmissionRecord, prepared, unique_id: str, ins_cx: str):
        """ITI-18 GetDocuments of one uniqueId: the registry's entries ([] none), None when it cannot tell."""
        try:
            entries = self.client.get_documents(unique_ids=[unique_id], patient_ins_cx=ins_cx, vihf=prepared.vihf)
        except Exception as exc:  # the query failing must not lose the withdrawal: it stays to settle
            log.warning("ITI-18 GetDocuments for submission %s failed: %s", record.submission_set_uid, exc)
            entries = None
        shown = "error" if entries is None else (",".join(e.availability or "?" for e in entries) or "not_found")
        self._audit("ITI-18", record, prepared, shown)
        return entries

    def _settle_withdrawal(self, record: SubmissionRecord, prepared, outcome: str, message: str) -> Result:
        testhooks.point("before_settle")
        self.ledger.settle_withdrawal(record.id, outcome=outcome, message=_with_note(record, message))
        testhooks.point("after_settle")
        log.info("submission %s: document %s v%d withdrawn from the DMP (%s)", record.submission_set_uid,
                 record.documents[0].document_id, record.documents[0].version, outcome,
                 extra=self._fields(record, outcome, None, WITHDRAWN))
        result = Result(FED, outcome)
        self._write_back(record, result, None, status=WITHDRAWN)
        return result

    # --- steps -----------------------------------------------------------------------------

    def _settle_unexpected(self, record: SubmissionRecord, prepared: Prepared, exc: Exception) -> None:
        message = f"unexpected error while delivering: {short_error(exc)}"
        try:
            if self.ledger.submission_error_code(record.id) == INTERNAL_ERROR:
                self._settle(record, prepared, Result(FAILED, "error", INTERNAL_ERROR), message)
            else:
                error = RegistryError(INTERNAL_ERROR, message, None, "Error")
                self._defer(record, prepared, Outcome("unknown", None, (error,), message), INTERNAL_ERROR)
        except LedgerError as err:  # the lease expires and a later run settles it
            log.error("submission %s: not settled after an unexpected error: %s", record.submission_set_uid, err)
        except Exception:
            log.exception("submission %s: not settled after an unexpected error", record.submission_set_uid)

    def _send_with_retries(self, record: SubmissionRecord, prepared: Prepared, action: str = ITI41) -> Outcome:
        r = self.settings.dmp.retry

        def attempt() -> Outcome:
            self.ledger.record_attempt(record.id)
            testhooks.point("before_send")
            if action == ITI57:
                outcome = self.client.update_document_set(prepared.request, prepared.vihf)
            else:
                outcome = self.client.provide_and_register(prepared.request, prepared.attachments, prepared.vihf)
            testhooks.point("after_send")
            self._audit(action, record, prepared, outcome.kind, _first_code(outcome),
                        _with_note(record, cause_of(outcome)))
            if not outcome.accepted:
                log.warning("submission %s (%d documents): %s attempt %d of %d: %s: %s", record.submission_set_uid,
                            len(record.documents), action, attempts[0] + 1, r.in_run_attempts,
                            outcome.kind, cause_of(outcome),
                            extra=self._fields(record, outcome.kind, _first_code(outcome)))
            attempts[0] += 1
            return outcome

        attempts = [0]

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(r.in_run_attempts),
            wait=tenacity.wait_random_exponential(multiplier=r.in_run_wait_initial, max=r.in_run_wait_max),
            # a failed TLS handshake is a configuration problem: trying again in seconds cannot change it
            retry=tenacity.retry_if_result(lambda o: o.kind == "transient" and o.cause != "tls"),
            retry_error_callback=lambda state: state.outcome.result(),
            reraise=True,
        )
        return retrying(attempt)

    def _lookup(self, record: SubmissionRecord, prepared: Prepared, ins_cx: str) -> bool | None:
        try:
            found = self.client.find_submission_set(record.submission_set_uid, ins_cx, prepared.vihf)
        except Exception as exc:  # the query failing must not lose the submission: it stays to settle
            log.warning("ITI-18 lookup of submission %s failed: %s", record.submission_set_uid, exc)
            found = None
        self._audit("ITI-18", record, prepared, {True: "found", False: "not_found", None: "error"}[found])
        return found

    def _defer(self, record: SubmissionRecord, prepared: Prepared, outcome: Outcome, reason: str) -> Result:
        r = self.settings.dmp.retry
        now = utcnow()
        first = self.ledger.first_attempt_at(record.id) or now
        if now - first >= dt.timedelta(days=r.lifetime_days):
            return self._settle(record, prepared, Result(FAILED, "expired", EXPIRED),
                                f"still failing after {r.lifetime_days:g} days: {cause_of(outcome)}")
        attempts = max(1, self.ledger.submission(record.id).attempts // max(1, r.in_run_attempts))
        delay = min(r.deferred_max_minutes, r.deferred_min_minutes * 2 ** (attempts - 1))
        message = cause_of(outcome)
        next_at = now + dt.timedelta(minutes=delay)
        self.ledger.settle_submission(record.id, state=DEFERRED, outcome=outcome.kind, error_code=_first_code(outcome),
                                      error_message=message, reason=reason, next_attempt_at=next_at)
        log.warning("submission %s (%d documents): DEFERRED %s until %s UTC: %s", record.submission_set_uid,
                    len(record.documents), reason, f"{next_at:%Y-%m-%d %H:%M}", message,
                    extra=self._fields(record, outcome.kind, _first_code(outcome) or reason, DEFERRED))
        return Result(DEFERRED, outcome.kind, _first_code(outcome) or reason, outcome.cause, message)

    def _settle(self, record: SubmissionRecord, prepared: Prepared, result: Result, message: str | None) -> Result:
        testhooks.point("before_settle")
        self.ledger.settle_submission(record.id, state=result.state, outcome=result.outcome, error_code=result.error_code,
                                      error_message=message, reason=None if result.state == FED else result.error_code)
        testhooks.point("after_settle")
        if result.state == FAILED:
            log.error("submission %s (%d documents): FAILED %s: %s", record.submission_set_uid,
                      len(record.documents), result.error_code, message,
                      extra=self._fields(record, result.outcome, result.error_code, result.state))
        else:
            log.info("submission %s (%d documents): %s (%s)%s", record.submission_set_uid, len(record.documents),
                     result.state, result.outcome, f": {message}" if message else "",
                     extra=self._fields(record, result.outcome, result.error_code, result.state))
        self._write_back(record, result, message)
        return result

    def _write_back(self, record: SubmissionRecord, result: Result, message: str | None,
                    status: str | None = None) -> None:
        now = utcnow()
        rows = [
            dict(document_id=d.document_id, version=d.version, status=status or result.state,
                 dmp_unique_id=d.unique_id if result.state == FED else None,
                 fed_at=now if result.state == FED else None,
                 last_error=None if result.state == FED else (message or result.error_code or "")[:1000])
            for d in record.documents
        ]
        try:
            self.store.write_back(rows)
        except Exception as exc:  # the ledger is the source of truth: the rows are rewritten from it later
            error = short_error(exc)
            self.ledger.write_back_failed([(d.document_id, d.version) for d in record.documents], error)
            self.write_back_failures += len(record.documents)  # read once the senders are done
            log.warning("submission %s: dmp_feed_status not written (%s); retried by the next run, or now with "
                        "`dmp-connector write-back`", record.submission_set_uid, error)

    def _fields(self, record: SubmissionRecord, outcome: str, error_code: str | None, state: str | None = None) -> dict:
        """The JSON log fields of a submission's line (logs.FIELDS)."""
        return dict(run_id=self.run_id, submission=record.submission_set_uid, outcome=outcome, error_code=error_code,
                    state=state)

    def _audit(self, action, record: SubmissionRecord, prepared: Prepared, outcome, code=None, message=None) -> None:
        self.ledger.audit(run_id=self.run_id, action=action, outcome=outcome, finess_geo=record.finess_geo,
                          rpps=_vihf_subject(prepared), submission_set_uid=record.submission_set_uid,
                          document_ids=[f"{d.document_id}:{d.version}" for d in record.documents],
                          error_code=code, message=message)


def _with_note(record: SubmissionRecord, message: str | None) -> str | None:
    """A correction's audit and ledger lines say what it is: a withdrawal's reason (EXI 09/10), what a
    replacement replaces."""
    if not record.note:
        return message
    return f"{message}; {record.note}" if message else record.note


def prepared_target(prepared) -> str | None:
    """The entryUUID an ITI-57 request updates (its UpdateAvailabilityStatus association's targetObject)."""
    for element in prepared.request.iter("{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}Association"):
        return element.get("targetObject")
    return None


def _no_reply() -> Outcome:
    return Outcome(kind="unknown", status=None, errors=(), message="ITI-18 could not tell whether it was received")


_LONG_NUMBER = re.compile(r"\d{13,}")  # an INS (NIR/NIA: 13 digits + key) echoed in a DMP message


def cause_of(outcome: Outcome) -> str:
    """What an outcome's log line and ledger detail say: the exception (class and message) or the DMP's error
    codes with their context (e.g. "Failure: XDSUnknownPatientId: DMP fermé"), never a patient's INS."""
    if not outcome.errors:
        return _LONG_NUMBER.sub("[number]", outcome.message)
    details = "; ".join(f"{e.code}: {e.context}" if e.context else e.code for e in outcome.errors)
    return _LONG_NUMBER.sub("[number]", f"{outcome.status or outcome.kind}: {details}")


def short_error(exc: BaseException) -> str:
    """An exception's class and first line, without the SQL statement and parameters SQLAlchemy appends
    (they may hold a document's values)."""
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).splitlines() or [""])[0][:300]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def _first_code(outcome: Outcome) -> str | None:
    return outcome.errors[0].code if outcome.errors else None


def _warnings(outcome: Outcome) -> str | None:
    return "; ".join(f"{e.code}: {e.context}" for e in outcome.errors) or None


def _vihf_subject(prepared: Prepared) -> str | None:
    """The RPPS of the VIHF subject (its NameID is the national id, "8" + RPPS) for the audit trail."""
    name_id = prepared.vihf.find(".//{urn:oasis:names:tc:SAML:2.0:assertion}NameID")
    return vihf.rpps_of(name_id.text if name_id is not None else None)
