"""The GIE's TD2.1 ITI-41 example (`schemas/gie-dmp-package/messages/`) and the structure of its metadata:
what each registry object carries (slot names, classification schemes and nodes, author sub-slots,
external identifiers, associations), to compare with our requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from connector.dmp import mtom
from connector.payload import xds

TD21 = Path(__file__).resolve().parents[1] / "schemas/gie-dmp-package/messages/TD2.1_Alimentation_requete.xml"
# The example is the MIME body of a soapUI capture, without its HTTP headers: this is its Content-Type.
TD21_CONTENT_TYPE = ('multipart/related; type="application/xop+xml"; boundary="----=_Part_9_20030738.1554380517598"; '
                     'start="<rootpart@soapui.org>"; start-info="application/soap+xml"')
R = f"{{{xds.RIM}}}"
AUTHOR_SCHEMES = (xds.SS_AUTHOR, xds.DE_AUTHOR)


def td21() -> tuple[etree._Element, dict[str, bytes]]:
    """(SOAP envelope, {content-id: bytes}) of TD2.1, read by the connector's MTOM decoder."""
    return mtom.decode(TD21_CONTENT_TYPE, TD21.read_bytes())


def td21_request() -> etree._Element:
    envelope, _ = td21()
    return envelope.find(f".//{{{xds.XDSB}}}ProvideAndRegisterDocumentSetRequest")


@dataclass(frozen=True)
class Shape:
    """What one registry object carries, values aside."""

    slots: frozenset[str]
    classifications: frozenset[str]  # classificationScheme, or "node:" + classificationNode
    author_slots: frozenset[str]
    external_ids: frozenset[str]  # identificationScheme
    associations: frozenset[tuple[str, str]]  # (type, role of the target), from this object
    association_slots: frozenset[tuple[str, str, str]]  # (type, role of the target, slot name)

    def missing_from(self, ours: Shape) -> dict[str, set]:
        """What this shape has that `ours` lacks, per kind ({} when nothing)."""
        missing = {kind: set(getattr(self, kind)) - set(getattr(ours, kind)) for kind in
                   Shape.__dataclass_fields__}
        return {kind: values for kind, values in missing.items() if values}


def shapes(request: etree._Element) -> dict[str, Shape]:
    """{"SubmissionSet" | "DocumentEntry" | "SignatureEntry": Shape} of a ProvideAndRegisterDocumentSetRequest
    (with several objects in one role, what they all carry)."""
    objects = request.find(f".//{R}RegistryObjectList")
    roles: dict[str, str] = {}
    for cl in objects.iter(f"{R}Classification"):
        if cl.get("classificationNode") == xds.SUBMISSION_SET:
            roles[cl.get("classifiedObject")] = "SubmissionSet"
    for eo in objects.iter(f"{R}ExtrinsicObject"):
        classes = {c.get("nodeRepresentation") for c in eo.findall(f"{R}Classification")
                   if c.get("classificationScheme") == xds.DE_CLASS_CODE}
        roles[eo.get("id")] = "SignatureEntry" if xds.SIGNATURE_CLASS.code in classes else "DocumentEntry"
    found: dict[str, list[dict[str, set]]] = {}
    for obj in (*objects.iter(f"{R}RegistryPackage"), *objects.iter(f"{R}ExtrinsicObject")):
        role = roles.get(obj.get("id"))
        if role is None:
            continue
        shape = {k: set() for k in Shape.__dataclass_fields__}
        found.setdefault(role, []).append(shape)
        shape["slots"] |= {s.get("name") for s in obj.findall(f"{R}Slot")}
        for cl in objects.iter(f"{R}Classification"):  # nested in the object, or standing alone in the list
            if cl.get("classifiedObject") != obj.get("id"):
                continue
            scheme = cl.get("classificationScheme")
            shape["classifications"].add(scheme or "node:" + cl.get("classificationNode"))
            if scheme in AUTHOR_SCHEMES:
                shape["author_slots"] |= {s.get("name") for s in cl.findall(f"{R}Slot")}
        shape["external_ids"] |= {e.get("identificationScheme") for e in obj.findall(f"{R}ExternalIdentifier")}
        for a in objects.iter(f"{R}Association"):
            if a.get("sourceObject") == obj.get("id"):
                kind = (a.get("associationType"), "to " + roles.get(a.get("targetObject"), "?"))
                shape["associations"].add(kind)
                shape["association_slots"] |= {(*kind, s.get("name")) for s in a.findall(f"{R}Slot")}
    return {role: Shape(**{k: frozenset(set.intersection(*(s[k] for s in each))) for k in Shape.__dataclass_fields__})
            for role, each in found.items()}


def missing_structure(request: etree._Element) -> dict[str, dict[str, set]]:
    """{object role: {kind: what TD2.1 carries there and `request` does not}}; {} when nothing is missing."""
    ours, theirs = shapes(request), shapes(td21_request())
    missing = {}
    for role, shape in theirs.items():
        if role not in ours:
            missing[role] = {"object": {role}}
        elif gaps := shape.missing_from(ours[role]):
            missing[role] = gaps
    return missing
