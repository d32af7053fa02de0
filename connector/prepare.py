"""Turn store documents into the exact payload of one submission set: CDA per document (built or passed
through, validated), the XAdES submission-set signature, the ITI-41 request (validated), and the VIHF.

Everything here is deterministic from the ids and the submission time recorded in the ledger, so a resend
rebuilds the same metadata and the same CDA bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from dataclasses import dataclass

from lxml import etree

from connector.config import Settings, Site
from connector.payload import cda, ids, lifecycle, update, validate, xds
from connector.payload.errors import PayloadError
from connector.store import Document, Patient
from connector.trust import dsig, roles, vihf
from connector.trust.certs import Credential

CDA_MIME = "text/xml"
log = logging.getLogger("connector.prepare")


@dataclass(frozen=True)
class Prepared:
    submission_set_uid: str
    request: etree._Element  # xdsb:ProvideAndRegisterDocumentSetRequest with empty xdsb:Document elements
    attachments: dict[str, bytes]  # xdsb:Document id -> bytes (MTOM parts)
    vihf: etree._Element
    signature_xml: bytes
    cdas: dict[str, bytes]  # document uniqueId -> CDA bytes


def document_cda(settings: Settings, document: Document, patient: Patient, site: Site, content: bytes,
                 schematron_process=None, *, replaces: lifecycle.Replaces | None = None,
                 revision: "Revision | None" = None) -> tuple[str, bytes]:
    """The document's uniqueId and its validated CDA (with `replaces`: the CDA of a replacement of that DMP
    entry, see `payload.lifecycle`; with `revision`, see `Revision`); raises PayloadError (CDA_INVALID /
    METADATA_INVALID)."""
    unique_id, xml, finish = start_document_cda(settings, document, patient, site, content, schematron_process,
                                                replaces=replaces, revision=revision)
    finish()
    return unique_id, xml


@dataclass(frozen=True)
class Revision:
    """A store document version sent to replace a DMP entry (a new version, a masking change, an unmask).

    `cda_version` is its CDA versionNumber, above every one sent before for the document (the store version, or
    the last one sent plus one when the same store version is sent again with new codes); its uniqueId and
    entryUUID derive from it (`dmp_document`), so each entry of a document in the DMP has ids of its own."""

    cda_version: int
    replaces: lifecycle.Replaces
    replaces_version: int  # the store version whose entry it replaces


def dmp_document(document: Document, revision: Revision | None) -> Document:
    """The document as its DMP entry describes it: with a revision, its CDA versionNumber as version (the ids
    derive from it); the ledger's key stays the store's (document_id, version)."""
    return document if revision is None else dataclasses.replace(document, version=revision.cda_version)


def start_document_cda(settings: Settings, document: Document, patient: Patient, site: Site, content: bytes,
                       schematron_process=None, *, replaces: lifecycle.Replaces | None = None,
                       revision: Revision | None = None):
    """`document_cda` in two steps: (uniqueId, CDA, finish), `finish()` raising once the schematron, run in
    `schematron_process` if given, has answered. Raises at once what is found before. With `revision`, the CDA
    replacing `revision.replaces` (ids and versionNumber from `revision.cda_version`)."""
    if revision is not None:
        document, replaces = dmp_document(document, revision), revision.replaces
    if document.mime_type == CDA_MIME:  # produced elsewhere: its uniqueId is its own id (the metadata's too)
        unique_id, xml = cda.passthrough_cda(content, document, patient, site, replaces)
        tree = None  # parsed from its bytes by the validation
    else:
        unique_id = ids.document_unique_id(settings.structure.oid_root, document.document_id, document.version)
        xml, tree = cda.build_cda_tree(document, patient, site, settings.structure, content, unique_id=unique_id,
                                       replaces=replaces)
    finish = validate.start_cda_validation(xml, document.document_id, process=schematron_process,
                                           schematron=_schematron_due(settings, site, document),
                                           engine=settings.validation.engine, tree=tree)
    return unique_id, xml, finish


_sampled: dict[tuple[str, str], int] = {}  # (site, type code) -> CDAs built in this process
_sampled_lock = threading.Lock()


def _schematron_due(settings: Settings, site: Site, document: Document) -> bool:
    """Whether this CDA goes through the ANS schematron too (always, unless `validation.schematron` says)."""
    mode = settings.validation.schematron
    if mode != "sample":
        return mode == "every"
    with _sampled_lock:
        seen = _sampled.get((site.finess_geo, document.type_code or ""), 0)
        _sampled[(site.finess_geo, document.type_code or "")] = seen + 1
    return seen % settings.validation.sample_every == 0


@dataclass(frozen=True)
class Batch:
    """One future submission set: a patient's documents of one site and one activity (contentTypeCode),
    within the configured caps."""

    site: Site
    patient: Patient
    documents: list[tuple[Document, str, bytes]]  # (document, uniqueId, CDA)
    revisions: dict[tuple[str, int], Revision] = dataclasses.field(default_factory=dict)  # replacements, by key

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(d.document_id, d.version) for d, _, _ in self.documents]

    @property
    def dmp_keys(self) -> list[tuple[str, int]]:
        """(document_id, CDA versionNumber) of its entries: what its submission set's ids derive from (the store
        keys for first feedings, as always; a replacement of the same store version gets ids of its own)."""
        return [(d.document_id, self.revisions[d.key].cda_version if d.key in self.revisions else d.version)
                for d, _, _ in self.documents]


def plan_patient(settings: Settings, eligible: list) -> tuple[list[tuple[object, PayloadError]], list[Batch]]:
    """Build and validate the CDA of each eligible decision of one patient, then group them per site and
    activity (the submission set's contentTypeCode) into batches capped by `submission.max_documents` and `submission.max_bytes`. Returns (failures, batches)."""
    return start_patient(settings, eligible)()


def start_patient(settings: Settings, eligible: list, schematron_process=None,
                  revisions: dict[tuple[str, int], Revision] | None = None):
    """`plan_patient` in two steps: the CDAs are built now and the schematron checks them in
    `schematron_process` (if given) meanwhile; the returned callable waits for it and plans. `revisions`: the
    replacements among them, by store key."""
    failures, built, revisions = [], [], revisions or {}
    for d in eligible:
        site = settings.structure.site(d.document.finess_geo)
        try:
            built.append((d, site, *start_document_cda(settings, d.document, d.patient, site, d.content,
                                                       schematron_process, revision=revisions.get(d.document.key))))
        except Exception as exc:
            failures.append((d, _as_payload_error(d, exc)))
    return lambda: _plan(settings, failures, built, revisions)


def _plan(settings: Settings, failures: list, built: list,
          revisions: dict | None = None) -> tuple[list[tuple[object, PayloadError]], list[Batch]]:
    revisions = revisions or {}
    groups = {}  # (site, contentTypeCode) -> (site, patient, documents)
    for d, site, uid, xml, finish in built:
        try:
            finish()
            content_type = xds.content_type_code(d.document, settings.submission)
        except Exception as exc:
            failures.append((d, _as_payload_error(d, exc)))
            continue
        key = (site.finess_geo, content_type.code, content_type.scheme)
        groups.setdefault(key, (site, d.patient, []))[2].append((d.document, uid, xml))
    cap_count, cap_bytes = settings.submission.max_documents, settings.submission.max_bytes
    batches = []
    for site, patient, docs in groups.values():
        current, size = [], 0
        for item in docs:
            if current and (len(current) >= cap_count or size + len(item[2]) > cap_bytes):
                batches.append(_batch(site, patient, current, revisions))
                current, size = [], 0
            current.append(item)
            size += len(item[2])
        if current:
            batches.append(_batch(site, patient, current, revisions))
    return failures, batches


def _batch(site: Site, patient: Patient, documents: list, revisions: dict) -> Batch:
    return Batch(site, patient, documents, {d.key: revisions[d.key] for d, _, _ in documents if d.key in revisions})


def _as_payload_error(d, exc: Exception) -> PayloadError:
    if isinstance(exc, PayloadError):
        return exc
    # A defect of ours: this document fails, the others go on.
    log.error("document %s v%d: could not be built", d.document_id, d.version, exc_info=exc)
    return PayloadError("BUILD_ERROR", f"document {d.document_id}: {type(exc).__name__} while building its CDA")


def submission(
    settings: Settings,
    sign: Credential,
    *,
    site: Site,
    patient: Patient,
    documents: list[tuple[Document, str, bytes]],  # (document, uniqueId, CDA)
    submission_set_uid: str,
    submission_set_entry_uuid: str,
    submission_time: dt.datetime,
    replaces: dict[str, lifecycle.Replaces] | None = None,
) -> Prepared:
    """Sign, assemble and validate the ITI-41 request of one patient's documents. `replaces`: {uniqueId of a
    document: the DMP entry it replaces} (its CDA must have been built with the same, see `document_cda`)."""
    replaces = replaces or {}
    unknown = set(replaces) - {uid for _, uid, _ in documents}
    if unknown:
        raise ValueError(f"submission set {submission_set_uid}: replacements of documents it does not hold: "
                         f"{', '.join(sorted(unknown))}")
    oid_root = settings.structure.oid_root
    activities = {xds.content_type_code(d, settings.submission) for d, _, _ in documents}
    if len(activities) > 1:  # only a resend whose store rows changed since: the set keeps its first document's
        log.warning("submission %s: its documents now have %d activities; contentTypeCode is its first document's",
                    submission_set_uid, len(activities))
    if submission_time.tzinfo is None:  # the ledger keeps naive UTC
        submission_time = submission_time.replace(tzinfo=dt.timezone.utc)
    entries = [
        xds.Entry(document=d, patient=patient, cda=xml, unique_id=uid,
                  entry_uuid=ids.entry_uuid(oid_root, d.document_id, d.version), replaces=replaces.get(uid))
        for d, uid, xml in documents
    ]
    signature_uid = ids.signature_unique_id(oid_root, submission_set_uid)
    signature_xml = dsig.sign_submission_set(
        sign,
        submission_set_uid=submission_set_uid,
        documents=[(e.unique_id, e.cda) for e in entries],
        signature_id="sig-" + signature_uid,  # an XML ID cannot start with a digit
        digest=settings.signature.digest,
        xades_namespace=settings.signature.xades_namespace,
        signing_time=submission_time,
    )
    request, attachments = xds.build_provide_and_register(
        structure=settings.structure,
        site=site,
        patient=patient,
        entries=entries,
        submission=settings.submission,
        submission_set_uid=submission_set_uid,
        submission_set_entry_uuid=submission_set_entry_uuid,
        submission_time=submission_time,
        signature=xds.SignatureEntry(
            xml=signature_xml,
            unique_id=signature_uid,
            entry_uuid=ids.signature_entry_uuid(oid_root, submission_set_uid),
            signing_time=submission_time,
        ),
    )
    errors = validate.xds_request_errors(request) or xds.metadata_errors(request, attachments)
    if errors:
        raise PayloadError("METADATA_INVALID", f"submission set {submission_set_uid}: {'; '.join(errors[:3])}")
    token = lookup_vihf(settings, sign, site=site, patient=patient, documents=[d for d, _, _ in documents])
    return Prepared(submission_set_uid, request, attachments, token, signature_xml,
                    {uid: xml for _, uid, xml in documents})


@dataclass(frozen=True)
class PreparedUpdate:
    """An ITI-57 availability update ready to send (`DmpClient.update_document_set`)."""

    submission_set_uid: str
    request: etree._Element  # lcm:SubmitObjectsRequest
    vihf: etree._Element


def withdrawal(
    settings: Settings,
    sign: Credential,
    *,
    site: Site,
    patient: Patient,
    document: Document,
    target_entry_uuid: str,
    submission_time: dt.datetime,
    new_status: str = lifecycle.DELETED,
    original_status: str = lifecycle.APPROVED,
) -> PreparedUpdate:
    """The validated ITI-57 request moving the DMP entry `target_entry_uuid` (the registry's entryUUID of
    `document`'s version, see `DmpClient.get_documents`) to `new_status` (Deleted, or Archived), and its VIHF.
    Its ids derive from the document version and the new status (`ids.update_submission_set_unique_id`), so a
    resend is identical. Raises PayloadError naming the document."""
    root = settings.structure.oid_root
    uid = ids.update_submission_set_unique_id(root, document.document_id, document.version, new_status)
    request = update.build_update_availability(
        structure=settings.structure, site=site, patient=patient, document=document,
        target_entry_uuid=target_entry_uuid, submission=settings.submission, submission_set_uid=uid,
        submission_set_entry_uuid=ids.update_submission_set_entry_uuid(root, document.document_id, document.version,
                                                                       new_status),
        submission_time=submission_time, new_status=new_status, original_status=original_status,
    )
    errors = validate.update_request_errors(request) or update.update_errors(request)
    if errors:
        raise PayloadError("METADATA_INVALID", f"document {document.document_id}: ITI-57 request: {'; '.join(errors[:3])}")
    token = lookup_vihf(settings, sign, site=site, patient=patient, documents=[document])
    return PreparedUpdate(uid, request, token)


def lookup_vihf(settings: Settings, sign: Credential, *, site: Site, patient: Patient,
                documents: list[Document]) -> etree._Element:
    """The signed VIHF of a request about `patient`'s `documents` at `site`: an ITI-41 or ITI-57, or an ITI-18
    lookup alone (for a submission that can no longer be rebuilt, its content gone)."""
    return vihf.build_vihf(sign, settings.vihf, finess_geo=site.finess_geo, facility_type=site.healthcare_facility_type,
                           patient_ins_cx=xds.ins_cx(patient), **vihf_subject(settings, documents))


def vihf_subject(settings: Settings, documents: list[Document]) -> dict[str, str]:
    """VIHF subject (EXI 24): an author, or the configured responsible professional; never a generic RPPS.
    The author must also have a specialty giving the role the DMP requires (a physician's savoir-faire)."""
    generic = set(settings.vihf.generic_rpps)
    for d in documents:
        if d.author_rpps and d.author_rpps not in generic and _has_role(d.author_specialty_code):
            return {"subject_rpps": d.author_rpps, "subject_specialty": d.author_specialty_code}
    if settings.vihf.responsible_rpps:
        return {"subject_rpps": settings.vihf.responsible_rpps,
                "subject_specialty": settings.vihf.responsible_specialty}
    raise PayloadError("METADATA_INVALID", "no author with a non-generic RPPS and a specialty giving the VIHF role "
                                           "(e.g. G15_10/SM26) for the VIHF subject: set vihf.responsible_rpps")


def _has_role(specialty: str | None) -> bool:
    try:
        roles.subject_roles(specialty)
    except roles.RoleError:
        return False
    return True
