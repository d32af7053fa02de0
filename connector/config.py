"""The configuration: one TOML file loaded into typed, validated, immutable settings.

Every error names the key (`dmp.base_url`, `structure.sites[1].finess_geo`, …) and what is wrong with it.
Secrets never live in this file: certificates point to a PKCS#12 file and to a file holding its password.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_VAR = "DMP_CONNECTOR_CONFIG"
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
FINESS_RE = re.compile(r"^[0-9][0-9AB][0-9]{7}$")
RPPS_RE = re.compile(r"^[0-9]{11}$")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class Site:
    finess_geo: str
    name: str
    healthcare_facility_type: str  # SAxx, JDV_J02 / J61
    practice_setting: str  # JDV_J04 / J62, e.g. ETABLISSEMENT


@dataclass(frozen=True)
class Structure:
    finess_ej: str
    oid_root: str
    name: str
    sites: tuple[Site, ...]
    source_id: str  # XDS sourceId of the submissions: OID of the sending system

    def site(self, finess_geo: str) -> Site | None:
        return next((s for s in self.sites if s.finess_geo == finess_geo), None)


@dataclass(frozen=True)
class StoreSettings:
    url: str
    content_root: Path  # relative content_path values are resolved against it
    write_back: bool = True


@dataclass(frozen=True)
class LedgerSettings:
    url: str
    instance: str  # this connector's name: one run at a time per instance, leases held in its name
    lease_minutes: float = 10.0  # how long a claimed submission is reserved to its instance


@dataclass(frozen=True)
class RetrySettings:
    in_run_attempts: int = 3
    in_run_wait_initial: float = 1.0
    in_run_wait_max: float = 20.0
    deferred_min_minutes: float = 15.0
    deferred_max_minutes: float = 24 * 60.0
    lifetime_days: float = 7.0


@dataclass(frozen=True)
class DmpSettings:
    base_url: str
    ca_bundle: Path | None
    environment: str  # "test" or "production"
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    request_deadline: float = 300.0  # a whole exchange (connect, send, reply), whatever the server's pace
    max_reply_bytes: int = 10 * 1024 * 1024
    max_in_flight: int = 4
    retry: RetrySettings = field(default_factory=RetrySettings)

    @property
    def repository_url(self) -> str:
        return self.base_url.rstrip("/") + "/repository"

    @property
    def registry_url(self) -> str:
        return self.base_url.rstrip("/") + "/registry"


@dataclass(frozen=True)
class CertificateSettings:
    p12: Path
    password_file: Path

    def password(self) -> bytes:
        """The PKCS#12 password, read when needed and never kept in the settings."""
        try:
            return self.password_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"password file {self.password_file}: {exc.strerror}") from None


@dataclass(frozen=True)
class Certificates:
    auth_cli: CertificateSettings
    sign: CertificateSettings


@dataclass(frozen=True)
class RulesSettings:
    allowed_type_codes: tuple[str, ...] = ()  # empty: every code of JDV_J07
    max_document_bytes: int = 20 * 1024 * 1024
    # A fed document whose store status becomes CANCELLED is withdrawn from the DMP (ITI-57, Deleted; EXI 09/10).
    withdraw_cancelled: bool = True
    # EXI 08: a document fed INVISIBLE_PATIENT becomes visible (a replacement without that code) at the
    # announcement consultation (dmp_document.announced_at), or this many days after it was first fed.
    unmask_after_days: int = 30


@dataclass(frozen=True)
class ValidationSettings:
    # Every CDA is checked against the ANS CDA XSD. The ANS schematron costs ~4–7 ms of CPU per document, and
    # ~1 s and 110–210 MB to compile once per process: "every" (default) runs it on every CDA; "sample" on the
    # first CDA of each (site, type code) in a process and then one in `sample_every`; "off" never.
    # `process`: with the "saxon" engine, `run` checks in a process of its own, on another core
    # (payload/schematron_process.py).
    schematron: str = "every"
    sample_every: int = 100
    process: bool = True
    # `engine`: "python" (default): the connector's own CDAs checked in the run's process without Saxon
    # (payload/schematron_python.py: libxslt, compiled checks, elementpath; same errors as Saxon, proven by the tests;
    # no schematron process); or "saxon": Saxon, in the process above.
    engine: str = "python"
    # PDF/A triage of each PDF body (connector/pdfa.py): "off", "warn" (a warning naming the document, counted in
    # the run's figures) or "reject" (skipped, CONTENT_NOT_PDFA).
    pdfa: str = "warn"


@dataclass(frozen=True)
class SubmissionSettings:
    max_documents: int = 20
    max_bytes: int = 50 * 1024 * 1024
    # The activity of a document whose store row has none (dmp_document.activity): an encounter class I/O/R/N or
    # a JDV_J59 code (payload/activity.py); it becomes the submission set's contentTypeCode. "97": indifférencié.
    default_activity: str = "97"
    # classCode follows ASS_X16 from the type code; a type the map does not list is refused (TYPE_NOT_ALLOWED)
    # unless this JDV_J57 code is set.
    class_code_fallback: str | None = None


@dataclass(frozen=True)
class SignatureSettings:
    digest: str = "sha1"  # sha1 or sha256; sha1 (rsa-sha1) as the GIE's TD2.1 example, sha256 [UNKNOWN]
    xades_namespace: str = "http://uri.etsi.org/01903/v1.1.1#"  # as TD2.1


@dataclass(frozen=True)
class VihfSettings:
    version: str = "3.0"
    authn_context: str = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
    # Name of the INDIRECTE attribute: every GIE example spells it "Authentification_mode", the ANS mapping
    # "Authentification_Mode".
    authentification_mode_attribute: str = "Authentification_mode"
    # The VIHF subject when no author can be (no usable RPPS or specialty): RPPS and JDV_J01 specialty
    # (e.g. G15_10/SM26), which gives the role: profession and, for a physician, savoir-faire.
    responsible_rpps: str | None = None
    responsible_specialty: str | None = None
    generic_rpps: tuple[str, ...] = ()
    # "Nom du logiciel, Nom du modèle et Service" for an automated process (ANS VIHF mapping).
    subject_id: str = "dmp-connector, alimentation automatique du DMP"
    lps_nom: str = "dmp-connector"
    lps_version: str = "0.1.0"
    lps_id_homologation_dmp: str = ""  # given by the GIE SESAM-Vitale; required in production
    lps_id: str = ""
    # rsa-sha1 with SHA-1 digests as every GIE example VIHF (signed ones: 3 of 3); sha256 [UNKNOWN]
    digest: str = "sha1"


@dataclass(frozen=True)
class MonitoringSettings:
    """What `status --check` (and a run's exit code) raise, and from when. Levels follow the monitoring-plugin
    conventions: WARNING needs a human today, CRITICAL now."""

    # skips that mean a configuration problem here (a FINESS typo: every document SITE_UNKNOWN); empty them
    # where another instance feeds the other sites of a shared store
    attention_skip_reasons: tuple[str, ...] = ("SITE_UNKNOWN", "TYPE_NOT_ALLOWED")
    deferred_warning_hours: float = 24.0  # a deferred document first tried longer ago than this
    deferred_critical_hours: float = 72.0
    submitting_stranded_minutes: float = 120.0  # SUBMITTING with no run in progress for longer than this
    last_success_warning_hours: float = 26.0  # a nightly run plus its randomized delay and a slow night
    last_success_critical_hours: float = 50.0  # two nights missed
    certificate_warning_days: float = 30.0
    certificate_critical_days: float = 7.0
    failed_critical: int = 0  # FAILED documents are a WARNING; this many or more a CRITICAL (0: never)
    # The HL7 intake (when its tables are in the store): a listener not seen for this long is down (CRITICAL);
    # this many messages refused in the last hour, more than in the hour before, are rising (WARNING).
    intake_down_minutes: float = 5.0
    intake_refused_warning: int = 5


@dataclass(frozen=True)
class IntakeHl7Settings:
    """`dmp-connector intake hl7`: the MLLP listener (connector/intake/mllp.py)."""

    host: str = "127.0.0.1"
    port: int = 2575
    tls_certificate: Path | None = None  # PEM certificate chain; with tls_key, the listener speaks TLS only
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CAs: a client certificate they issued is then required
    max_message_bytes: int = 32 * 1024 * 1024
    max_connections: int = 16
    workers: int = 2
    read_timeout: float = 60.0  # a message (or an ACK) stalled this long closes its connection
    idle_timeout: float = 600.0  # a connection without a message this long is closed
    figures_interval: float = 15.0  # its figures and heartbeat are written to the store this often (status reads them)


@dataclass(frozen=True)
class IntakeFolderSettings:
    """`dmp-connector intake folder`: the drop folder (connector/intake/folder.py)."""

    path: Path | None = None  # None: no drop folder configured
    poll_seconds: float = 5.0  # the watcher sweeps the folder this often
    max_file_bytes: int = 20 * 1024 * 1024  # a bigger file is rejected TOO_LARGE without being read
    orphan_minutes: float = 60.0  # a PDF without its sidecar (or a sidecar without its document) waits this long
    figures_interval: float = 15.0  # its figures and heartbeat are written to the store this often


@dataclass(frozen=True)
class Settings:
    source: Path | None
    state_dir: Path
    structure: Structure
    store: StoreSettings
    ledger: LedgerSettings
    dmp: DmpSettings
    certificates: Certificates | None
    rules: RulesSettings
    submission: SubmissionSettings
    validation: ValidationSettings
    signature: SignatureSettings
    vihf: VihfSettings
    schedule: str = "0 2 * * *"
    timezone: str = "Europe/Paris"
    audit_retention_days: int = 183
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    intake_hl7: IntakeHl7Settings = field(default_factory=IntakeHl7Settings)
    intake_folder: IntakeFolderSettings = field(default_factory=IntakeFolderSettings)


# --- loading ---------------------------------------------------------------------------------


INSTALLED_PATH = Path("/etc/dmp-connector/dmp-connector.toml")  # where the README's installation puts it


def default_path() -> Path | None:
    """$DMP_CONNECTOR_CONFIG, else the installed configuration if it exists (a day-2 command from a root shell
    reads what the service reads)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return INSTALLED_PATH if INSTALLED_PATH.is_file() else None


def load(path: Path | str | None) -> Settings:
    """Read and validate the TOML file at `path` (--config), else $DMP_CONNECTOR_CONFIG, else
    /etc/dmp-connector/dmp-connector.toml."""
    path = Path(path) if path else default_path()
    if path is None:
        raise ConfigError(f"no configuration given: use --config PATH, set {ENV_VAR}, or install {INSTALLED_PATH}")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, base=path.resolve().parent, source=path)


def from_dict(data: dict[str, Any], base: Path, source: Path | None = None) -> Settings:
    r = _Reader(data, base)
    state_dir = r.path("state_dir", default=_default_state_dir())
    structure = _structure(r)
    dmp = _dmp(r)
    settings = Settings(
        source=source,
        state_dir=state_dir,
        structure=structure,
        store=StoreSettings(
            url=r.db_url("store.url"),
            content_root=r.path("store.content_root", default=base),
            write_back=r.boolean("store.write_back", True),
        ),
        ledger=LedgerSettings(
            url=r.db_url("ledger.url", default=f"sqlite:///{state_dir / 'ledger.sqlite3'}",
                         dialects=("sqlite", "postgresql")),
            instance=r.string("ledger.instance", socket.gethostname() or "dmp-connector"),
            lease_minutes=r.number("ledger.lease_minutes", 10.0, positive=True),
        ),
        dmp=dmp,
        certificates=_certificates(r),
        rules=RulesSettings(
            allowed_type_codes=tuple(r.str_list("rules.allowed_type_codes", [])),
            max_document_bytes=r.integer("rules.max_document_bytes", RulesSettings.max_document_bytes, minimum=1),
            withdraw_cancelled=r.boolean("rules.withdraw_cancelled", RulesSettings.withdraw_cancelled),
            unmask_after_days=r.integer("rules.unmask_after_days", RulesSettings.unmask_after_days, minimum=0),
        ),
        submission=_submission(r),
        validation=ValidationSettings(
            schematron=r.string("validation.schematron", "every", choices=("every", "sample", "off")),
            pdfa=r.string("validation.pdfa", "warn", choices=("off", "warn", "reject")),
            sample_every=r.integer("validation.sample_every", 100, minimum=1),
            process=r.boolean("validation.process", True),
            engine=r.string("validation.engine", "python", choices=("saxon", "python")),
        ),
        signature=_signature(r),
        vihf=_vihf(r, structure, dmp.environment),
        schedule=r.string("schedule.cron", "0 2 * * *", pattern=CRON_RE, what="a 5-field cron expression"),
        timezone=_timezone(r),
        audit_retention_days=r.integer("audit.retention_days", 183, minimum=1),
        monitoring=_monitoring(r),
        intake_hl7=_intake_hl7(r),
        intake_folder=_intake_folder(r),
    )
    r.reject_unknown()
    return settings


# Five fields of digits, names (mon, jan…), * / , - ?: the scheduler itself (APScheduler, not imported at every
# start) reads the values, in `check` and when the daemon starts.
CRON_RE = re.compile(r"^\s*[\w*/,?-]+(\s+[\w*/,?-]+){4}\s*$")


def _timezone(r: "_Reader") -> str:
    name = r.string("schedule.timezone", "Europe/Paris")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"schedule.timezone: unknown time zone {name!r} (e.g. Europe/Paris)") from None
    return name


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise the XDG state home.
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "dmp-connector"


def _structure(r: _Reader) -> Structure:
    finess_ej = r.string("structure.finess_ej", pattern=FINESS_RE, what="a 9-character FINESS")
    oid_root = r.string("structure.oid_root", pattern=OID_RE, what="an OID such as 1.2.250.1.999.1")
    if len(oid_root) > 30:
        raise ConfigError("structure.oid_root: at most 30 characters (minted uniqueIds must stay within 64)")
    raw_sites = r.get("structure.sites", None)
    if not isinstance(raw_sites, list) or not raw_sites:
        raise ConfigError("structure.sites: at least one [[structure.sites]] table is required")
    sites = []
    for i, raw in enumerate(raw_sites):
        key = f"structure.sites[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{key}: must be a table")
        sr = _Reader(raw, r.base, prefix=key + ".")
        sites.append(
            Site(
                finess_geo=sr.string("finess_geo", pattern=FINESS_RE, what="a 9-character FINESS"),
                name=sr.string("name"),
                healthcare_facility_type=sr.string(
                    "healthcare_facility_type", pattern=re.compile(r"^SA[0-9]{2}$"), what="a code SAxx"
                ),
                practice_setting=sr.string("practice_setting"),
            )
        )
        sr.reject_unknown()
    seen = [s.finess_geo for s in sites]
    dup = {f for f in seen if seen.count(f) > 1}
    if dup:
        raise ConfigError(f"structure.sites: FINESS géographique {sorted(dup)[0]} is configured twice")
    return Structure(
        finess_ej=finess_ej,
        oid_root=oid_root,
        name=r.string("structure.name", "Structure " + finess_ej),
        sites=tuple(sites),
        source_id=r.string("structure.source_id", oid_root, pattern=OID_RE, what="an OID"),
    )


def _dmp(r: _Reader) -> DmpSettings:
    base_url = r.string("dmp.base_url")
    if not base_url.startswith("https://"):
        raise ConfigError("dmp.base_url: must be an https:// URL")
    try:
        if not urlsplit(base_url).hostname:
            raise ConfigError(f"dmp.base_url: no host in {base_url!r}")
        urlsplit(base_url).port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as exc:
        raise ConfigError(f"dmp.base_url: {base_url!r} is not a valid URL ({exc})") from None
    environment = r.string("dmp.environment", choices=("test", "production"))
    d = RetrySettings()
    retry = RetrySettings(
        in_run_attempts=r.integer("dmp.retry.in_run_attempts", d.in_run_attempts, minimum=1),
        in_run_wait_initial=r.number("dmp.retry.in_run_wait_initial", d.in_run_wait_initial),
        in_run_wait_max=r.number("dmp.retry.in_run_wait_max", d.in_run_wait_max),
        deferred_min_minutes=r.number("dmp.retry.deferred_min_minutes", d.deferred_min_minutes),
        deferred_max_minutes=r.number("dmp.retry.deferred_max_minutes", d.deferred_max_minutes),
        lifetime_days=r.number("dmp.retry.lifetime_days", d.lifetime_days, positive=True),
    )
    return DmpSettings(
        base_url=base_url,
        ca_bundle=r.path("dmp.ca_bundle", default=None, must_exist=True),
        environment=environment,
        connect_timeout=r.number("dmp.connect_timeout", 10.0, positive=True),
        read_timeout=r.number("dmp.read_timeout", 30.0, positive=True),
        request_deadline=r.number("dmp.request_deadline", DmpSettings.request_deadline, positive=True),
        max_reply_bytes=r.integer("dmp.max_reply_bytes", DmpSettings.max_reply_bytes, minimum=1024),
        max_in_flight=r.integer("dmp.max_in_flight", 4, minimum=1),
        retry=retry,
    )


def _monitoring(r: _Reader) -> MonitoringSettings:
    d = MonitoringSettings()
    m = MonitoringSettings(
        attention_skip_reasons=tuple(r.str_list("monitoring.attention_skip_reasons", list(d.attention_skip_reasons))),
        **{name: r.number(f"monitoring.{name}", getattr(d, name)) for name in (
            "deferred_warning_hours", "deferred_critical_hours", "submitting_stranded_minutes",
            "last_success_warning_hours", "last_success_critical_hours", "certificate_warning_days",
            "certificate_critical_days", "intake_down_minutes")},
        failed_critical=r.integer("monitoring.failed_critical", d.failed_critical, minimum=0),
        intake_refused_warning=r.integer("monitoring.intake_refused_warning", d.intake_refused_warning, minimum=1),
    )
    for warning, critical in (("deferred_warning_hours", "deferred_critical_hours"),
                              ("last_success_warning_hours", "last_success_critical_hours")):
        if getattr(m, critical) < getattr(m, warning):
            raise ConfigError(f"monitoring.{critical}: must be at least monitoring.{warning}")
    if m.certificate_critical_days > m.certificate_warning_days:
        raise ConfigError("monitoring.certificate_critical_days: must be at most monitoring.certificate_warning_days")
    return m


def _intake_hl7(r: _Reader) -> IntakeHl7Settings:
    d = IntakeHl7Settings()
    listen = r.string("intake.hl7.listen", f"{d.host}:{d.port}")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"intake.hl7.listen: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:2575, [::]:2575)")
    certificate = r.path("intake.hl7.tls_certificate", None, must_exist=True)
    key = r.path("intake.hl7.tls_key", None, must_exist=True)
    client_ca = r.path("intake.hl7.tls_client_ca", None, must_exist=True)
    if (certificate is None) != (key is None):
        raise ConfigError("intake.hl7.tls_certificate: tls_certificate and tls_key go together")
    if client_ca is not None and certificate is None:
        raise ConfigError("intake.hl7.tls_client_ca: needs tls_certificate and tls_key (client certificates are "
                          "checked in a TLS handshake)")
    return IntakeHl7Settings(
        host=host, port=int(port), tls_certificate=certificate, tls_key=key, tls_client_ca=client_ca,
        max_message_bytes=r.integer("intake.hl7.max_message_bytes", d.max_message_bytes, minimum=1024),
        max_connections=r.integer("intake.hl7.max_connections", d.max_connections, minimum=1),
        workers=r.integer("intake.hl7.workers", d.workers, minimum=1),
        read_timeout=r.number("intake.hl7.read_timeout_seconds", d.read_timeout, positive=True),
        idle_timeout=r.number("intake.hl7.idle_timeout_seconds", d.idle_timeout, positive=True),
        figures_interval=r.number("intake.hl7.figures_interval_seconds", d.figures_interval, positive=True),
    )


def _intake_folder(r: _Reader) -> IntakeFolderSettings:
    d = IntakeFolderSettings()
    return IntakeFolderSettings(
        path=r.path("intake.folder.path", None),
        poll_seconds=r.number("intake.folder.poll_seconds", d.poll_seconds, positive=True),
        max_file_bytes=r.integer("intake.folder.max_file_bytes", d.max_file_bytes, minimum=1),
        orphan_minutes=r.number("intake.folder.orphan_minutes", d.orphan_minutes, positive=True),
        figures_interval=r.number("intake.folder.figures_interval_seconds", d.figures_interval, positive=True),
    )


def _certificates(r: _Reader) -> Certificates | None:
    if r.get("certificates", None) is None:
        return None

    def one(name: str) -> CertificateSettings:
        # A path under a variable that is not set (${CREDENTIALS_DIRECTORY} outside the service) is checked only
        # by the commands that read the certificates: `status`, `hold`, `replay --dry-run`… work from a shell.
        return CertificateSettings(
            p12=r.path(f"certificates.{name}.p12", must_exist="unless-unset"),
            password_file=r.path(f"certificates.{name}.password_file", must_exist="unless-unset"),
        )

    return Certificates(auth_cli=one("auth_cli"), sign=one("sign"))


# Settings of earlier versions whose value now comes from the DMP's tables: say so rather than "unknown key".
_RETIRED_SUBMISSION_KEYS = {
    **dict.fromkeys(("class_code", "class_code_scheme", "class_code_display"),
                    "classCode now follows the ASS_X16 map from the type code (see submission.class_code_fallback)"),
    **dict.fromkeys(("content_type_code", "content_type_scheme", "content_type_display"),
                    "contentTypeCode now comes from the document's activity (dmp_document.activity, "
                    "else submission.default_activity)"),
}


def _submission(r: _Reader) -> SubmissionSettings:
    from connector.payload import activity, codes  # the DMP's tables, read from schemas/ on first use

    section = r.get("submission", {})
    for key in _RETIRED_SUBMISSION_KEYS:
        if isinstance(section, dict) and key in section:
            raise ConfigError(f"submission.{key}: no longer a setting: {_RETIRED_SUBMISSION_KEYS[key]}")
    d = SubmissionSettings()
    default_activity = r.string("submission.default_activity", d.default_activity)
    try:
        activity.content_type(default_activity)
    except activity.ActivityError as exc:
        raise ConfigError(f"submission.default_activity: {exc}") from None
    fallback = r.string("submission.class_code_fallback", None)
    if fallback is not None and codes.class_code(fallback) is None:
        raise ConfigError(f"submission.class_code_fallback: {fallback!r} is not a JDV_J57 classCode")
    return SubmissionSettings(
        max_documents=r.integer("submission.max_documents", d.max_documents, minimum=1),
        max_bytes=r.integer("submission.max_bytes", d.max_bytes, minimum=1),
        default_activity=default_activity,
        class_code_fallback=fallback,
    )


def _signature(r: _Reader) -> SignatureSettings:
    d = SignatureSettings()
    return SignatureSettings(
        digest=r.string("signature.digest", d.digest, choices=("sha1", "sha256")),
        xades_namespace=r.string(
            "signature.xades_namespace",
            d.xades_namespace,
            choices=("http://uri.etsi.org/01903/v1.1.1#", "http://uri.etsi.org/01903/v1.3.2#"),
        ),
    )


def _vihf(r: _Reader, structure: Structure, environment: str) -> VihfSettings:
    from connector.trust.roles import RoleError, subject_roles

    d = VihfSettings()
    responsible = r.string("vihf.responsible_rpps", None, pattern=RPPS_RE, what="an 11-digit RPPS")
    specialty = r.string("vihf.responsible_specialty", None)
    if responsible and not specialty:
        raise ConfigError("vihf.responsible_specialty: required with vihf.responsible_rpps (the JDV_J01 specialty "
                          "of that professional, e.g. G15_10/SM26: the VIHF role is derived from it)")
    if specialty:
        try:
            subject_roles(specialty)
        except RoleError as exc:
            raise ConfigError(f"vihf.responsible_specialty: {exc}") from None
    lps_nom = r.string("vihf.lps_nom", d.lps_nom)
    homologation = r.string("vihf.lps_id_homologation_dmp", d.lps_id_homologation_dmp)
    if environment == "production" and not homologation:
        raise ConfigError('vihf.lps_id_homologation_dmp: required with dmp.environment = "production" (the DMP '
                          "homologation number the GIE SESAM-Vitale gave this software; the DMP refuses a VIHF "
                          "without it)")
    return VihfSettings(
        version=r.string("vihf.version", d.version),
        digest=r.string("vihf.digest", d.digest, choices=("sha1", "sha256")),
        authn_context=r.string("vihf.authn_context", d.authn_context),
        authentification_mode_attribute=r.string(
            "vihf.authentification_mode_attribute", d.authentification_mode_attribute,
            choices=("Authentification_mode", "Authentification_Mode"),
        ),
        responsible_rpps=responsible,
        responsible_specialty=specialty,
        generic_rpps=tuple(r.str_list("vihf.generic_rpps", [])),
        subject_id=r.string("vihf.subject_id", f"{lps_nom}, alimentation automatique du DMP, {structure.name}"),
        lps_nom=lps_nom,
        lps_version=r.string("vihf.lps_version", d.lps_version),
        lps_id_homologation_dmp=homologation,
        lps_id=r.string("vihf.lps_id", structure.source_id),
    )


_MISSING = object()


class _Reader:
    """Reads dotted keys from a TOML dict, type-checks them and remembers what was read."""

    def __init__(self, data: dict[str, Any], base: Path, prefix: str = ""):
        self.data, self.base, self.prefix = data, base, prefix
        self.read: set[str] = set()

    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.data
        parts = key.split(".")
        for i, part in enumerate(parts):
            self.read.add(".".join(parts[: i + 1]))
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise ConfigError(f"{self.prefix}{key}: missing (required)")
                return default
            node = node[part]
        return node

    def _fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}{key}: {message}")

    def string(self, key, default=_MISSING, *, pattern=None, what=None, choices=None):
        value = self.get(key, default)
        if value is None or (value is default and default is not _MISSING):
            return value
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, f"must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise self._fail(key, f"{value!r} is not {what or 'valid'}")
        if choices is not None and value not in choices:
            raise self._fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def boolean(self, key, default):
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key, default, minimum=None):
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self._fail(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, key, default, *, positive=False):
        """A finite number, >= 0 (> 0 if `positive`: a timeout of 0 or a lifetime of nan fails every request)."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self._fail(key, f"must be a finite non-negative number, got {value!r}")
        if positive and value == 0:
            raise self._fail(key, f"must be greater than 0, got {value!r}")
        return float(value)

    def str_list(self, key, default):
        value = self.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, f"must be a list of strings, got {value!r}")
        return value

    def path(self, key, default=_MISSING, must_exist=False):
        value = self.get(key, default)
        if value is None or isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise self._fail(key, f"must be a path, got {value!r}")
        p = Path(os.path.expandvars(value)).expanduser()
        p = p if p.is_absolute() else self.base / p
        if must_exist == "unless-unset" and "$" in str(p):
            return p
        if must_exist and not p.exists():
            raise self._fail(key, f"{p} does not exist")
        return p

    def db_url(self, key, default=_MISSING, dialects=None):
        value = self.string(key, default)
        if not re.match(r"^[a-z][a-z0-9+]*://", value):
            raise self._fail(key, f"{value!r} is not a SQLAlchemy URL such as sqlite:///path or postgresql+psycopg://…")
        if dialects and value.split("://", 1)[0].split("+", 1)[0] not in dialects:
            raise self._fail(key, f"{value.split('://', 1)[0]}:// is not supported here: "
                                  "sqlite:///path or postgresql+psycopg://… only")
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            relative = value[len("sqlite:///"):]
            if relative and relative != ":memory:":
                value = f"sqlite:///{self.base / relative}"
        return value

    def reject_unknown(self) -> None:
        """An unknown key is most often a typo: say so rather than silently ignore it."""

        def walk(node: dict, path: str):
            for k, v in node.items():
                dotted = f"{path}{k}"
                if dotted == "structure.sites":
                    continue
                if dotted not in self.read:
                    raise ConfigError(f"{self.prefix}{dotted}: unknown key")
                if isinstance(v, dict):
                    walk(v, dotted + ".")

        walk(self.data, "")
