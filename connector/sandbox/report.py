"""What the sandbox DMP received: the benchmark's and the demo's ground truth.

The headline number is `duplicate_deliveries`: a document uniqueId stored more than once (an identical
re-registration the DMP accepted), plus `same_document_other_uid`: one producer document (CDA setId and
versionNumber) stored under two uniqueIds. Both must stay at 0 for a connector that never feeds twice.
The corrections lifecycle: `replacements` (RPLC applied), `withdrawals` (entries moved to Deleted by ITI-57),
`archivals` (to Archived), and `statuses`: how many document entries are in each availability status.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from connector.sandbox.state import DELETED, SandboxState

ARCHIVED = "urn:asip:ci-sis:2010:StatusType:Archived"


def report(state_path: Path | str) -> dict:
    state = SandboxState(state_path)
    try:
        return _counts(state.query)
    finally:
        state.close()


def _counts(q) -> dict:
    docs = "FROM documents WHERE is_signature = 0"
    duplicates = [
        dict(r)
        for r in q(
            "SELECT uid, count(*) AS deliveries, group_concat(submission_uid, ' ') AS submissions"
            f" {docs} GROUP BY uid HAVING count(*) > 1 ORDER BY uid"
        )
    ]
    other_uid = [
        {"set_id": r["set_id"], "version": r["version"], "uids": sorted(r["uids"].split(","))}
        for r in q(
            "SELECT set_id, version, group_concat(DISTINCT uid) AS uids"
            f" {docs} AND set_id IS NOT NULL GROUP BY set_id, version HAVING count(DISTINCT uid) > 1"
        )
    ]
    rejected = q("SELECT count(DISTINCT coalesce(request, 'row' || id)) AS n FROM rejections")[0]["n"]
    return {
        "submissions": q("SELECT count(*) AS n FROM submissions")[0]["n"],
        "submissions_reply_dropped": q("SELECT count(*) AS n FROM submissions WHERE reply_dropped = 1")[0]["n"],
        "documents": q(f"SELECT count(*) AS n {docs}")[0]["n"],
        "distinct_documents": q(f"SELECT count(DISTINCT uid) AS n {docs}")[0]["n"],
        "duplicate_deliveries": q(f"SELECT count(*) AS n {docs} AND duplicate = 1")[0]["n"],
        "duplicates": duplicates,
        "same_document_other_uid": other_uid,
        "per_patient": {r["patient"]: r["n"] for r in q(f"SELECT patient, count(*) AS n {docs} GROUP BY patient")},
        "replacements": q("SELECT count(*) AS n FROM lifecycle WHERE kind = 'replacement'")[0]["n"],
        "withdrawals": q(f"SELECT count(*) AS n FROM lifecycle WHERE kind = 'status' AND new_status = '{DELETED}'")[0]["n"],
        "archivals": q(f"SELECT count(*) AS n FROM lifecycle WHERE kind = 'status' AND new_status = '{ARCHIVED}'")[0]["n"],
        "statuses": {r["status"].rsplit(":", 1)[-1]: r["n"] for r in
                     q(f"SELECT status, count(*) AS n {docs} AND duplicate = 0 GROUP BY status ORDER BY status")},
        "injected_faults": {
            f"{r['service']} {r['kind']}": r["n"]
            for r in q("SELECT service, kind, count(*) AS n FROM injected_faults GROUP BY service, kind ORDER BY 1, 2")
        },
        "rejected_requests": rejected,
        "rejected": rejected,  # short alias used by the end-to-end tests
        "rejections": {r["code"]: r["n"] for r in q("SELECT code, count(*) AS n FROM rejections GROUP BY code ORDER BY code")},
        "rejection_reasons": [
            dict(r)
            for r in q(
                "SELECT code, check_name, context, count(*) AS n FROM rejections"
                " GROUP BY code, check_name, context ORDER BY n DESC, code"
            )
        ],
    }


def _patient_label(ins_cx: str) -> str:
    """A stable pseudonym: the text report never shows an INS."""
    return "patient-" + hashlib.sha256(ins_cx.encode()).hexdigest()[:8]


def render_text(rep: dict) -> str:
    lines = [
        f"submission sets stored: {rep['submissions']} (reply dropped after commit: {rep['submissions_reply_dropped']})",
        f"documents stored: {rep['documents']} ({rep['distinct_documents']} distinct uniqueIds)",
        f"duplicate deliveries: {rep['duplicate_deliveries']}",
    ]
    lines += [f"  {d['uid']}: {d['deliveries']} deliveries (submission sets {d['submissions']})" for d in rep["duplicates"]]
    lines.append(f"same document under another uniqueId: {len(rep['same_document_other_uid'])}")
    lines += [f"  setId {d['set_id']} v{d['version']}: {', '.join(d['uids'])}" for d in rep["same_document_other_uid"]]
    statuses = ", ".join(f"{status} {n}" for status, n in rep["statuses"].items()) or "none"
    lines.append(f"replacements: {rep['replacements']}, withdrawals: {rep['withdrawals']}, archivals: {rep['archivals']}"
                 f" (entries: {statuses})")
    lines.append(f"patients: {len(rep['per_patient'])}")
    lines += [f"  {_patient_label(p)}: {n} documents" for p, n in sorted(rep["per_patient"].items())]
    lines.append(f"injected faults: {sum(rep['injected_faults'].values())}")
    lines += [f"  {kind}: {n}" for kind, n in rep["injected_faults"].items()]
    lines.append(f"rejected requests: {rep['rejected_requests']}")
    lines += [
        f"  {r['n']} × {r['code']} [{r['check_name'] or '-'}] {r['context']}" for r in rep["rejection_reasons"]
    ]
    return "\n".join(lines) + "\n"
