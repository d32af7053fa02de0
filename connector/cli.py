"""The `dmp-connector` command line: parse, call an action, print. No business logic here."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from connector import __version__, config, malloc
from connector.errors import CertificateError, LedgerError, StoreError
from connector.printable import printable, printable_lines

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_ATTENTION = 1  # the command ran but something needs a human (failed check, status --check)
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4  # store, ledger or DMP unreachable / not usable
EXIT_LOCKED = 5  # another run holds the lock
EXIT_CERTIFICATE = 6

log = logging.getLogger("connector")

# Errors a command may end with, first match wins (connector.errors imports nothing heavy).
KNOWN_ERRORS = (
    (StoreError, "", EXIT_UNAVAILABLE),
    (LedgerError, "", EXIT_UNAVAILABLE),
    (config.ConfigError, "configuration: ", EXIT_CONFIG),
    (CertificateError, "certificate: ", EXIT_CERTIFICATE),
)


def fail(message: str, code: int) -> None:
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


CONFIG_KEY = "dmp_connector.config"
CONFIG_HELP = (f"TOML configuration file (default: ${config.ENV_VAR}, else {config.INSTALLED_PATH}); "
               "before or after the command.")


def _remember_config(ctx, _param, value):
    if value is not None:
        ctx.meta[CONFIG_KEY] = value
    return value


def with_settings(func):
    """Adds --config to a command and hands it loaded settings; configuration errors end the command cleanly."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP)
    @functools.wraps(func)
    def wrapper(config_path, **kwargs):
        # --config after the subcommand, else before it, else $DMP_CONNECTOR_CONFIG, else the installed file
        config_path = config_path or click.get_current_context().meta.get(CONFIG_KEY)
        try:
            settings = config.load(config_path)
        except config.ConfigError as exc:
            fail(f"configuration: {exc}", EXIT_CONFIG)
        try:
            return func(settings, **kwargs)
        except tuple(error for error, _, _ in KNOWN_ERRORS) as exc:
            prefix, code = next((p, c) for error, p, c in KNOWN_ERRORS if isinstance(exc, error))
            fail(f"{prefix}{exc}", code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dmp-connector")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), expose_value=False, is_eager=True,
              callback=_remember_config, help=CONFIG_HELP)
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-json", is_flag=True, help="Log JSON lines (journald, ELK) instead of text.")
def main(log_level: str, log_json: bool) -> None:
    """Feed the DMP (Mon espace santé) with the structure's documents."""
    from connector import logs

    logs.setup(log_level, log_json)


# --- run ---------------------------------------------------------------------------------------


@main.command()
@with_settings
@click.option("--dry-run", is_flag=True, help="Show every candidate and its decision; record and send nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(settings, dry_run: bool, fmt: str) -> None:
    """Scan the store and feed every eligible document to the DMP."""
    if dry_run:
        from connector.actions import dry_run as action

        rows = (action.as_dict(d, settings) for d in action.decisions(settings))  # printed as they come, never all in memory
        if fmt == "json":
            for chunk in action.json_chunks(rows):
                click.echo(chunk, nl=False)
            click.echo()
        else:
            count = eligible = fails = 0
            for r in rows:
                what = (f"eligible  {r['finess_geo']} activity {r['content_type_code']}" if r["decision"] == "eligible"
                        else f"{r['decision']}  {r['reason']}")  # skipped, or fails: the run would record FAILED
                if r["correction"] == "WITHDRAW":
                    what = "withdraw from the DMP"
                elif r["correction"] == "REPLACE":
                    what += f"  replaces the DMP entry of v{r['replaces']}"
                detail = f"  ({r['detail']})" if r["detail"] else ""
                click.echo(printable(f"{r['document_id']} v{r['version']}  {what}{detail}"))
                count, eligible, fails = count + 1, eligible + (r["decision"] == "eligible"), fails + (r["decision"] == "fails")
            click.echo(f"{count} candidates: {eligible} eligible, " + (f"{fails} would fail, " if fails else "")
                       + f"{count - eligible - fails} skipped")
        return
    malloc.tune(malloc.FEEDING)
    summary = _run_now(settings)
    click.echo(summary.text() if fmt == "text" else json.dumps(summary.as_dict(), ensure_ascii=False, indent=1))
    if summary.counts["error"]:  # a defect to report, whatever else the run did
        click.echo(f"error: {summary.counts['error']} document(s) hit an unexpected error while being delivered "
             "(INTERNAL_ERROR: see the log)", err=True)
    sys.exit(summary.exit_code)  # 6 TLS refused, 4 DMP unreachable, 1 failures: see the README


def _run_now(settings, **options):
    """A run that stops cleanly on SIGINT (Ctrl-C) or SIGTERM (systemd stop): no new patient is taken, the
    submissions in flight finish and are recorded; a second signal stops at once (the ledger's write-ahead
    journal lets the next run settle whatever was in flight)."""
    from connector.actions import run as action
    from connector.logs import RunProgress, StopRequested
    from connector.runlock import AlreadyRunning

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("%s: finishing the submissions in flight, then stopping (again to stop at once)",
                    signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return action.run(settings, progress=RunProgress(stop=stop), **options)
    except AlreadyRunning as exc:
        fail(str(exc), EXIT_LOCKED)
    except StopRequested:
        fail("run interrupted: the submissions in flight were finished and recorded; "
             "the next run feeds the rest", EXIT_ATTENTION)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- replay, hold, release ---------------------------------------------------------------------


@main.command()
@with_settings
@click.option("--failed/--all-states", default=True, show_default=True,
              help="Only FAILED documents (default), or also DEFERRED and SKIPPED ones.")
@click.option("--reason", help="Only documents with this reason code (e.g. XDSUnknownPatientId, CDA_INVALID, EXPIRED).")
@click.option("--site", help="Only documents of this FINESS géographique.")
@click.option("--since", type=click.DateTime(), help="Only documents whose state changed since (UTC).")
@click.option("--run", "run_id", type=int, help="Only documents last handled by this run.")
@click.option("--document", "document_id", help="Only this document id.")
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
@click.option("--no-run", is_flag=True, help="Requeue only (no certificate needed): the next run feeds them, e.g. "
                                              "`systemctl start dmp-connector-run`.")
def replay(settings, failed, reason, site, since, run_id, document_id, dry_run, no_run) -> None:
    """Requeue failed documents (after correction) and run now; print what happened to each."""
    from connector.actions import replay as action
    from connector.actions.context import open_settings_ledger

    from connector.actions.context import describe_url

    ledger = open_settings_ledger(settings)
    click.echo(f"ledger {describe_url(ledger.engine)}")
    filters = action.Filters(failed, reason, site, since, run_id, document_id)
    rows = action.matching(ledger, filters)
    for r in rows:
        click.echo(printable(f"{'would requeue' if dry_run else 'requeue'} {r['document_id']} v{r['version']}  "
                             f"({r['state']} {r['reason'] or ''})"))
    if dry_run or not rows:
        click.echo(f"{len(rows)} document(s) {'would be ' if dry_run else ''}requeued")
        return
    if no_run:
        from connector.runlock import AlreadyRunning, run_lock

        try:
            with run_lock(ledger, settings.state_dir, settings.ledger.instance):
                action.requeue(ledger, action.matching(ledger, filters))
        except AlreadyRunning as exc:
            fail(str(exc), EXIT_LOCKED)
        click.echo(f"{len(rows)} document(s) requeued: the next run feeds them "
                   "(as the service: `systemctl start dmp-connector-run`)")
        return
    # requeued under the run's lock (matched again there: a run may have settled some meanwhile), then run
    summary = _run_now(settings, mode="replay",
                       under_lock=lambda locked: action.requeue(locked, action.matching(locked, filters)))
    keys = [(r["document_id"], r["version"]) for r in rows]
    for key, (state, why) in action.states_of(ledger, keys).items():
        click.echo(printable(f"{key[0]} v{key[1]}: {state}{' ' + why if why else ''}"))
    click.echo(summary.text())
    sys.exit(summary.exit_code)


@main.command()
@with_settings
@click.argument("document_id")
@click.option("--version", type=int, help="The version to withdraw (default: the one Approved in the DMP).")
@click.option("--reason", required=True, help="Why (EXI 09/10): kept in the audit trail and on the document.")
@click.option("--no-run", is_flag=True, help="Journal it only: the next run sends it.")
def withdraw(settings, document_id: str, version, reason: str, no_run: bool) -> None:
    """Withdraw a document from the DMP (ITI-57, Deleted), then run now; print what happened to it."""
    from connector.actions import corrections
    from connector.actions.context import describe_url, open_settings_ledger
    from connector.runlock import AlreadyRunning, run_lock

    reason = reason.strip()
    if not reason:
        fail("withdraw: --reason must say why (EXI 09/10)", 2)
    ledger = open_settings_ledger(settings)
    click.echo(f"ledger {describe_url(ledger.engine)}")
    requested = []

    def journal(locked) -> None:
        requested.append(corrections.request_withdrawal(settings, locked, document_id, version, reason))

    try:
        if no_run:
            try:
                with run_lock(ledger, settings.state_dir, settings.ledger.instance):
                    journal(ledger)
            except AlreadyRunning as exc:
                fail(str(exc), EXIT_LOCKED)
            doc = requested[0].documents[0]
            click.echo(printable(f"withdrawal of {doc.document_id} v{doc.version} journaled: the next run sends it"))
            return
        summary = _run_now(settings, mode="withdraw", under_lock=journal)
    except corrections.NotInTheDmp as exc:
        fail(printable(str(exc)), EXIT_ATTENTION)
    doc = requested[0].documents[0]
    state = ledger.states([(doc.document_id, doc.version)])[(doc.document_id, doc.version)]
    click.echo(printable(f"{doc.document_id} v{doc.version}: {state.state} {state.reason or ''}, in the DMP "
                         f"{state.dmp_status or 'unknown'}"))
    click.echo(summary.text())
    sys.exit(summary.exit_code)


@main.command()
@with_settings
@click.argument("document_id")
@click.option("--version", type=int, help="Only this version (default: every version).")
def hold(settings, document_id: str, version) -> None:
    """Keep a document out of every run until released."""
    _set_held(settings, document_id, version, True)


@main.command()
@with_settings
@click.argument("document_id")
@click.option("--version", type=int, help="Only this version (default: every version).")
def release(settings, document_id: str, version) -> None:
    """Let a held document be fed again."""
    _set_held(settings, document_id, version, False)


def _set_held(settings, document_id, version, held: bool) -> None:
    """Holds are kept by document id (and optional version) whether or not a run has seen the document."""
    from connector.actions.context import open_settings_ledger
    from connector.ledger.schema import FED

    from connector.actions.context import describe_url
    from connector.ledger.repo import LedgerMissing

    try:
        ledger = open_settings_ledger(settings)
        click.echo(f"ledger {describe_url(ledger.engine)}")
    except LedgerMissing as exc:
        if not held:
            raise
        # a hold before the first run is what identity vigilance needs: the ledger is created for it, loudly
        ledger = open_settings_ledger(settings, create=True)
        click.echo(f"ledger {describe_url(ledger.engine)} created for this hold ({exc}): if the service's ledger "
                   "is elsewhere, this is not its configuration", err=True)
    what = f"{document_id}{'' if version is None else f' v{version}'}"
    seen = {k: s for k, s in ledger.states([(document_id, v) for v in _versions(ledger, document_id, version)]).items()
            if s.state is not None}
    if not held:
        if ledger.release(document_id, version) == 0:
            others = ledger.holds_of(document_id)
            hint = (" (it is held for every version: release it without --version)" if None in others and version
                    is not None else f" (held versions: {', '.join(map(str, others))})" if others else "")
            fail(f"{what} is not held{hint}", EXIT_ATTENTION)
        click.echo(f"{what}: released; the next run decides on it")
        return
    new = ledger.hold(document_id, version)
    fed = sorted(v for (_, v), s in seen.items() if s.state == FED)
    click.echo(f"{what}: {'held' if new else 'already held'}"
               f"{'' if version is not None else ' (every version)'}"
               f"{'' if seen else ' (no run has seen it yet: it will not be fed)'}")
    if fed:
        click.echo(f"note: {document_id} v{', v'.join(map(str, fed))} already FED: the DMP keeps what it received; "
                   "the hold only keeps other versions out")


def _versions(ledger, document_id: str, version) -> list[int]:
    if version is not None:
        return [version]
    import sqlalchemy as sa

    from connector.ledger.schema import documents

    with ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(documents.c.version).where(documents.c.document_id == document_id)).scalars())


# --- write-back ---------------------------------------------------------------------------------


@main.command("write-back")
@with_settings
@click.option("--all", "everything", is_flag=True, help="Rewrite the row of every FED and FAILED document.")
def write_back(settings, everything: bool) -> None:
    """Write the store's dmp_feed_status from the ledger: the rows a failed write-back missed (every run also
    retries them), or with --all every row."""
    from connector.actions.context import describe_url, open_settings_ledger, open_store
    from connector.actions.write_back import retry_write_backs

    ledger = open_settings_ledger(settings)
    click.echo(f"ledger {describe_url(ledger.engine)}")
    store = open_store(settings)
    if not store.write_back_enabled:
        fail("store.write_back = false: the connector never writes dmp_feed_status", EXIT_ATTENTION)
    store.ensure_write_back_table()
    written, error = retry_write_backs(ledger, store, everything=everything)
    if error:
        fail(f"dmp_feed_status: {written} row(s) written, then: {error}", EXIT_UNAVAILABLE)
    click.echo(f"dmp_feed_status: {written} row(s) written")


# --- status ------------------------------------------------------------------------------------


@main.command()
@with_settings
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default=None,
              help="Report format (default text; with --check or --prometheus alone, no report is printed).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Only documents first seen, runs started and feeds since DATE.")
@click.option("--check", is_flag=True,
              help="Monitoring plugin: one status line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
@click.option("--max-age-hours", type=float, default=None,
              help="With --check: oldest acceptable successful run (default monitoring.last_success_warning_hours).")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path),
              help="Write node-exporter textfile metrics to FILE (atomically).")
def status(settings, fmt, since, check: bool, max_age_hours, prometheus) -> None:
    """Summarise the ledger: last runs, documents by state and reason, failures, feeding indicators."""
    import dataclasses

    from connector.actions import status as action
    from connector.actions.context import open_settings_ledger

    try:
        ledger = open_settings_ledger(settings)
    except LedgerError as exc:
        if check:  # the check itself cannot tell: UNKNOWN, on stdout as monitoring reads it
            click.echo(f"DMP-CONNECTOR UNKNOWN - {exc}")
            sys.exit(action.UNKNOWN)
        raise
    report = action.with_intake(action.collect(ledger, since=since.date() if since else None), settings)
    monitoring = settings.monitoring
    if max_age_hours is not None:
        monitoring = dataclasses.replace(monitoring, last_success_warning_hours=max_age_hours,
                                         last_success_critical_hours=max(max_age_hours,
                                                                         monitoring.last_success_critical_hours))
    sites = tuple(s.finess_geo for s in settings.structure.sites)
    if fmt or not (check or prometheus):
        # the page's headline is the verdict of --check, on the whole ledger
        health = action.health(report if not since else action.with_intake(action.collect(ledger), settings),
                               monitoring, sites=sites) \
            if fmt == "html" else None
        text = action.render(report, fmt or "text", health=health,
                             site_names={s.finess_geo: s.name for s in settings.structure.sites})
        click.echo(text if fmt in ("json", "html") else printable_lines(text))
    # monitoring (--prometheus, --check) is about the whole ledger, never a period
    whole = (action.with_intake(action.collect(ledger), settings) if since else report) if (prometheus or check) \
        else None
    if prometheus:
        action.write_prometheus(whole, prometheus)
    if check:
        found = action.health(whole, monitoring, sites=sites)
        click.echo(printable(found.status_line()))
        for level, why in found.reasons:  # the plugin's long output: one reason a line
            click.echo(printable(f"{action.LEVELS[level]}: {why}"))
        sys.exit(found.level)


# --- daemon and audit trail --------------------------------------------------------------------


@main.command()
@with_settings
@click.option("--run-now", is_flag=True, help="Also run once at start, then follow the schedule.")
def daemon(settings, run_now: bool) -> None:
    """Run on the configured schedule ([schedule] cron, timezone) until SIGTERM."""
    from connector import scheduler

    malloc.tune(malloc.FEEDING)
    scheduler.daemon(settings, run_now=run_now)


@main.group()
def intake() -> None:
    """Take documents the way DPIs send them, into the store (the run then feeds them)."""


@intake.command("hl7")
@with_settings
def intake_hl7(settings) -> None:
    """Listen for HL7 v2 messages over MLLP ([intake.hl7]): ORU^R01, MDM^T02/T10/T04 carrying a CDA, committed
    to the store (store.url) before they are acknowledged; until SIGTERM."""
    import sqlalchemy as sa

    from connector.intake import mllp

    try:
        mllp.serve_forever(settings.intake_hl7, settings.store.url, settings.rules.max_document_bytes)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"store: cannot create the intake's tables: {type(getattr(exc, 'orig', exc)).__name__}",
             EXIT_UNAVAILABLE)
    except OSError as exc:
        fail(f"intake.hl7.listen: cannot listen on {settings.intake_hl7.host}:{settings.intake_hl7.port}: "
             f"{exc.strerror or exc}", EXIT_UNAVAILABLE)


@intake.command("folder")
@with_settings
@click.option("--once", is_flag=True, help="Sweep the folder once and exit (for a cron job or a timer).")
def intake_folder(settings, once: bool) -> None:
    """Take the documents dropped in [intake.folder] path: a CDA (X.xml) or a PDF (X.pdf) with a sidecar (X.json)
    of store-contract columns, committed to the store (store.url), then moved to done/ (or rejected/ with
    X.reason). Watches until SIGTERM, sweeping every poll_seconds; --once: one sweep, exit 1 if a file was
    rejected."""
    import sqlalchemy as sa

    from connector.intake import folder

    s = settings.intake_folder
    if s.path is None:
        fail("intake.folder.path: not set (the drop folder)", EXIT_CONFIG)
    if not s.path.is_dir():
        fail(f"intake.folder.path: {s.path} is not a directory", EXIT_CONFIG)
    try:
        outcomes = folder.run(s, settings.store.url, once=once)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"store: cannot create the intake's tables: {type(getattr(exc, 'orig', exc)).__name__}",
             EXIT_UNAVAILABLE)
    except OSError as exc:
        fail(f"intake.folder.path: {exc.strerror or exc}", EXIT_UNAVAILABLE)
    if once:
        left = [o for o in outcomes if o.outcome not in ("accepted", "resend")]
        click.echo(f"intake folder: {len(outcomes) - len(left)} taken, {len(left)} not taken"
                   + "".join(f"\n  {printable(o.name, 200)}: {o.outcome}" for o in left))
        if any(o.outcome == "store_unavailable" for o in left):
            sys.exit(EXIT_UNAVAILABLE)
        sys.exit(EXIT_ATTENTION if left else EXIT_OK)


@main.group()
def audit() -> None:
    """The audit trail of DMP transactions (EXI 16)."""


@audit.command("export")
@with_settings
@click.option("--since", help="From this date (YYYY-MM-DD) or ISO date-time, UTC, included.")
@click.option("--until", help="To this date (whole day included) or ISO date-time (excluded), UTC.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def audit_export(settings, since, until, fmt: str, out) -> None:
    """Export the DMP transactions of a period: time, site, RPPS, submission and documents, action, outcome."""
    from connector.actions import audit as action
    from connector.actions.context import open_settings_ledger

    try:
        start = action.parse_when(since) if since else None
        end = action.parse_when(until, end=True) if until else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    ledger = open_settings_ledger(settings)
    if out is None:
        action.export(ledger, sys.stdout, fmt=fmt, since=start, until=end)
        return
    with open(out, "w", encoding="utf-8", newline="") as fh:
        n = action.export(ledger, fh, fmt=fmt, since=start, until=end)
    click.echo(f"{n} audit entries written to {out}", err=True)


# --- export ------------------------------------------------------------------------------------


@main.command()
@with_settings
@click.option("--document", "document_id", help="Export this document (its submission set).")
@click.option("--version", type=int, help="With --document: this version only.")
@click.option("--all", "all_documents", is_flag=True, help="Export every eligible document.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--as-sent", is_flag=True, help="With --document: the submission set as the ledger journaled and sent "
                                               "it (same ids, time and grouping; new VIHF and signature).")
def export(settings, document_id, version, all_documents, out: Path, as_sent: bool) -> None:
    """Write the CDA, signature, VIHF and exact SOAP/MTOM request of eligible documents, without sending."""
    from connector.actions import export as action

    if bool(document_id) == bool(all_documents):
        raise click.UsageError("give either --document ID or --all")
    if as_sent and not document_id:
        raise click.UsageError("--as-sent needs --document ID")
    if as_sent:
        exported, problems = action.export_as_sent(settings, out, document_id=document_id, version=version)
    else:
        exported, problems = action.export(settings, out, document_id=document_id, version=version)
    for e in exported:
        click.echo(f"{e.folder}: " + ", ".join(f"{d} v{v}" for d, v in e.documents))
    for p in problems:
        click.echo(f"not exported: {p}", err=True)
    click.echo(f"{sum(len(e.documents) for e in exported)} document(s) in {len(exported)} submission set(s)")
    if problems or not exported:
        sys.exit(EXIT_ATTENTION)


# --- check -------------------------------------------------------------------------------------


@main.command()
@with_settings
def check(settings) -> None:
    """Check configuration, databases, certificates and the TLS handshake with the DMP."""
    from connector.actions.check import run_checks

    results = run_checks(settings)
    marks = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}
    for c in results:
        click.echo(f"[{marks[c.level]}] {c.name:<9} {c.message}")
    errors = [c for c in results if c.level == "error"]
    if errors:
        sys.exit(EXIT_CERTIFICATE if all(c.name in ("auth_cli", "sign") for c in errors) else EXIT_ATTENTION)


# --- demo --------------------------------------------------------------------------------------


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="demo")
def demo(directory: Path) -> None:
    """Run the whole job on the embedded default in DIRECTORY (default ./demo): test PKI, sample store,
    sandbox DMP, a real run over mutual TLS, then the status."""
    from connector.actions import demo as action

    action.demo(directory, echo=click.echo)


# --- sandbox DMP -------------------------------------------------------------------------------


@main.group()
def sandbox() -> None:
    """A local DMP for demos, tests and benchmarks (mTLS, MTOM, strict checks, fault injection)."""


@sandbox.command("pki")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--finess-ej", default="0B0999999", show_default=True)
def sandbox_pki(directory: Path, finess_ej: str) -> None:
    """Write a test CA, a server certificate for localhost/127.0.0.1 and the ORG AUTH_CLI and ORG SIGN
    PKCS#12 files (with their password files) into DIRECTORY."""
    from connector.trust.pki import create_test_pki

    files = create_test_pki(directory, finess_ej=finess_ej)
    for name in ("ca_cert", "server_cert", "auth_cli_p12", "auth_cli_password_file", "sign_p12", "sign_password_file"):
        click.echo(f"{name:<22} {getattr(files, name)}")


@sandbox.command("serve")
@click.option("--port", default=8443, show_default=True)
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False, path_type=Path), default="sandbox-pki",
              show_default=True, help="Test PKI folder (created if empty).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default="sandbox.sqlite3",
              show_default=True, help="SQLite file keeping what the sandbox received (survives restarts).")
@click.option("--latency-ms", default=0, show_default=True)
@click.option("--fail-rate", default=0.0, show_default=True, help="Share of requests answered 503 or XDSRegistryBusy.")
@click.option("--drop-after-commit-rate", default=0.0, show_default=True,
              help="Share of submissions stored, then the connection dropped without a reply.")
@click.option("--fast", is_flag=True, help="Skip the CDA schematron check (benchmarks).")
@click.option("--seed", type=int, default=None, help="Seed of the fault injection (reproducible runs).")
def sandbox_serve(**options) -> None:
    """Serve the sandbox DMP on 127.0.0.1 until interrupted."""
    from connector.sandbox import server

    server.main(**options)


@sandbox.command("report")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default="sandbox.sqlite3", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def sandbox_report(state_path: Path, fmt: str) -> None:
    """What the sandbox received: counts, per patient, duplicates, rejections with reasons."""
    from connector.sandbox import report

    data = report.report(state_path)
    click.echo(json.dumps(data, ensure_ascii=False, indent=1, default=str) if fmt == "json" else report.render_text(data))


# --- shipped files ------------------------------------------------------------------------------


@main.command()
@click.argument("names", nargs=-1)
@click.option("--to", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Copy the named files (default: all) into DIRECTORY instead of printing one.")
def files(names, directory) -> None:
    """List, print or copy the files the package ships: the systemd units, config.example.toml, README.md."""
    from importlib import resources

    shipped = resources.files("connector") / "dist"
    available = sorted(p.name for p in shipped.iterdir() if not p.name.startswith(("_", ".")))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not shipped (there are {', '.join(available)})")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in names or available:
            (directory / name).write_bytes((shipped / name).read_bytes())
            click.echo(f"{directory / name}")
        return
    if not names:
        click.echo("\n".join(available))
    elif len(names) == 1:
        click.echo((shipped / names[0]).read_text(encoding="utf-8"), nl=False)
    else:
        raise click.UsageError("print one file at a time (or copy several with --to DIR)")


# --- samples and database ----------------------------------------------------------------------


@main.group()
def samples() -> None:
    """The sample store of fictitious patients."""


@samples.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def samples_create(directory: Path) -> None:
    """Write a SQLite sample store (and its PDF files) into DIRECTORY."""
    from connector import samples as sample_store

    path = sample_store.create_sample_store(directory)
    click.echo(f"sample store written: {path}")


@samples.command("correct")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
def samples_correct(directory: Path) -> None:
    """Change the sample store in DIRECTORY as a DPI would after a first run (a new version, a cancellation, a
    masking change, an announcement consultation): the next run corrects the DMP."""
    from connector import samples as sample_store

    sample_store.apply_corrections(directory)
    for document_id, what in sample_store.CORRECTIONS:
        click.echo(f"{document_id}: {what}")


@main.group()
def db() -> None:
    """The ledger database."""


@db.command("upgrade")
@with_settings
def db_upgrade(settings) -> None:
    """Create or migrate the ledger schema (Alembic)."""
    import sqlalchemy as sa

    from connector.actions.context import describe_url
    from connector.ledger import migrate
    from connector.ledger.repo import open_ledger

    before = None
    if not settings.ledger.url.startswith("sqlite") or Path(settings.ledger.url.split("///", 1)[-1]).exists():
        try:
            engine = sa.create_engine(settings.ledger.url)
            before = migrate.current(engine)
            engine.dispose()
        except sa.exc.SQLAlchemyError:
            pass  # said by open_ledger below, in one line
    ledger = open_ledger(settings.ledger.url, auto_migrate=True)
    after = migrate.current(ledger.engine)
    what = (f"created at schema {after}" if before is None else f"already at schema {after}: nothing to do"
            if before == after else f"migrated from schema {before} to {after}")
    click.echo(f"ledger {describe_url(ledger.engine)}: {what}")


@db.command("rebuild")
@with_settings
def db_rebuild(settings) -> None:
    """Rebuild a lost ledger from the store's dmp_feed_status: every document recorded FED there is recorded
    FED in the ledger (never sent again); the others are evaluated by the next run. Only into a ledger that
    has sent nothing."""
    from connector.actions import rebuild
    from connector.actions.context import open_settings_ledger, open_store
    from connector.runlock import AlreadyRunning, run_lock

    ledger, store = open_settings_ledger(settings, create=True), open_store(settings)  # a new one, if lost
    try:
        with run_lock(ledger, settings.state_dir, settings.ledger.instance):
            n = rebuild.rebuild(ledger, store)
    except AlreadyRunning as exc:
        fail(str(exc), EXIT_LOCKED)
    click.echo(f"ledger rebuilt from dmp_feed_status: {n} document(s) recorded FED; "
               "the others are evaluated by the next run")


if __name__ == "__main__":  # pragma: no cover
    main()
