"""ITI-57 Update Document Set (withdraw / archive a DMP entry): our request against the GIE's TD3.3c / TD3.3d
examples (golden structure), the GIE's ebRS schemas, and the structural check."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from lxml import etree

from connector.dmp import soap
from connector.payload import ids, update, validate, xds
from connector.payload.errors import PayloadError
from connector.payload.lifecycle import APPROVED, ARCHIVED, DELETED, DEPRECATED, UPDATE_AVAILABILITY_STATUS
from conftest import make_document, make_patient, make_settings

MESSAGES = Path(__file__).resolve().parents[1] / "schemas/gie-dmp-package/messages"
TD33C = MESSAGES / "TD3.3c_Supprimer_un_document_requete.xml"
TD33D = MESSAGES / "TD3.3d_Archiver_un_document_requete.xml"
R = f"{{{xds.RIM}}}"
TARGET = "urn:uuid:fe5287a2-ae6a-11eb-8f5d-0050569e422e"
WHEN = dt.datetime(2026, 11, 22, 8, 0, 0, tzinfo=dt.timezone.utc)


def gie_request(path: Path) -> etree._Element:
    return soap.body_child(etree.parse(str(path)).getroot())


def ours(tmp_path, *, new_status=DELETED, original_status=APPROVED, document=None, target=TARGET):
    settings = make_settings(tmp_path)
    structure = settings.structure
    document = document or make_document()
    return update.build_update_availability(
        structure=structure, site=structure.sites[0], patient=make_patient(), document=document,
        target_entry_uuid=target, submission=settings.submission,
        submission_set_uid=ids.update_submission_set_unique_id(structure.oid_root, document.document_id,
                                                               document.version, new_status),
        submission_set_entry_uuid=ids.update_submission_set_entry_uuid(structure.oid_root, document.document_id,
                                                                       document.version, new_status),
        submission_time=WHEN, new_status=new_status, original_status=original_status,
    )


def shape(request: etree._Element) -> dict[str, set]:
    """What the SubmissionSet and the UpdateAvailabilityStatus association carry, values aside (a Classification
    or ExternalIdentifier belongs to the object it is nested in, or to the one it names)."""
    objects = request.find(f"{R}RegistryObjectList")
    (package,) = objects.findall(f"{R}RegistryPackage")
    ss = package.get("id")
    owned = lambda tag: [e for e in objects.iter(f"{R}{tag}")  # noqa: E731
                         if e.getparent() is package or e.get("classifiedObject") == ss or e.get("registryObject") == ss]
    found = {"slots": {s.get("name") for s in package.findall(f"{R}Slot")}, "classifications": set(),
             "author_slots": set(), "external_ids": set(), "associations": set(), "association_slots": set(),
             "association_attributes": set()}
    for cl in owned("Classification"):
        found["classifications"].add(cl.get("classificationScheme") or "node:" + cl.get("classificationNode"))
        if cl.get("classificationScheme") == xds.SS_AUTHOR:
            found["author_slots"] |= {s.get("name") for s in cl.findall(f"{R}Slot")}
        if cl.get("classificationScheme") == xds.SS_CONTENT_TYPE:
            found["classifications"] |= {"contentTypeCode slot " + s.get("name") for s in cl.findall(f"{R}Slot")}
    found["external_ids"] = {e.get("identificationScheme") for e in owned("ExternalIdentifier")}
    for a in objects.findall(f"{R}Association"):
        found["associations"].add((a.get("associationType"), "from SubmissionSet" if a.get("sourceObject") == ss else "?"))
        found["association_slots"] |= {s.get("name") for s in a.findall(f"{R}Slot")}
        found["association_attributes"] |= set(a.attrib)
    return found


def status_slots(request: etree._Element) -> tuple[str, str]:
    (association,) = request.iter(f"{R}Association")
    return tuple(association.find(f"{R}Slot[@name='{name}']/{R}ValueList/{R}Value").text.strip()
                 for name in ("OriginalStatus", "NewStatus"))


def test_the_gie_examples_are_read_whole():
    """The comparison cannot pass by reading nothing."""
    for path in (TD33C, TD33D):
        theirs = shape(gie_request(path))
        assert theirs["slots"] == {"submissionTime"}
        assert theirs["author_slots"] == {"authorPerson", "authorSpecialty", "authorInstitution"}
        assert len(theirs["external_ids"]) == 3 and len(theirs["classifications"]) == 4
        assert theirs["associations"] == {(UPDATE_AVAILABILITY_STATUS, "from SubmissionSet")}
        assert theirs["association_slots"] == {"OriginalStatus", "NewStatus"}
    assert status_slots(gie_request(TD33C))[1] == DELETED and status_slots(gie_request(TD33D)) == (APPROVED, ARCHIVED)


@pytest.mark.parametrize("example, new_status", [(TD33C, DELETED), (TD33D, ARCHIVED)])
def test_our_request_carries_everything_the_gie_example_carries(tmp_path, example, new_status):
    theirs, mine = shape(gie_request(example)), shape(ours(tmp_path, new_status=new_status))
    assert {kind: theirs[kind] - mine[kind] for kind in theirs if theirs[kind] - mine[kind]} == {}
    assert status_slots(ours(tmp_path, new_status=new_status)) == (APPROVED, new_status)


def test_the_submission_set_says_who_withdraws_what(tmp_path):
    request = ours(tmp_path)
    view = update.parse_update(request)
    assert view.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert view.source_id == make_settings(tmp_path).structure.source_id
    assert view.structure_id == "10B0999998"  # "1" + FINESS géographique, as the VIHF's Identifiant_Structure
    assert view.changes == (update.StatusChange(TARGET, APPROVED, DELETED),)
    assert view.submission_set_uid.startswith("1.2.250.1.999.42.5.")


@pytest.mark.parametrize("new_status", [DELETED, ARCHIVED])
def test_our_request_is_valid_against_the_gie_schemas_and_our_checks(tmp_path, new_status):
    request = ours(tmp_path, new_status=new_status)
    assert validate.update_request_errors(request) == []
    assert validate.xds_request_errors(request) == []  # IHE's copy of the same schemas
    assert update.update_errors(request) == []


def test_the_gie_examples_pass_our_checks_but_not_the_schema():
    """The DMP's own examples omit classifiedObject / registryObject on nested objects, which the ebRIM schema
    requires: we always write them (the sandbox tolerates exactly this, as the DMP does)."""
    for path in (TD33C, TD33D):
        assert update.update_errors(gie_request(path)) == []
        errors = validate.update_request_errors(gie_request(path))
        assert errors and all("'classifiedObject' is required" in e or "'registryObject' is required" in e
                              for e in errors), errors
    assert validate.update_request_errors(soap.body_child(etree.parse(
        str(MESSAGES / "TD3.3c_Supprimer_un_document_reponse.xml")).getroot())) == []


def test_same_inputs_build_the_same_bytes(tmp_path):
    assert etree.tostring(ours(tmp_path)) == etree.tostring(ours(tmp_path))
    assert etree.tostring(ours(tmp_path)) != etree.tostring(ours(tmp_path, new_status=ARCHIVED))


@pytest.mark.parametrize("kwargs, message", [
    ({"new_status": APPROVED}, "is not Deleted or Archived"),
    ({"new_status": DEPRECATED}, "is not Deleted or Archived"),
    ({"new_status": DELETED, "original_status": DELETED}, "cannot become"),
    ({"original_status": "urn:example:Other"}, "cannot become"),
    ({"target": "1.2.3.4"}, "urn:uuid"),
    ({"document": make_document(author_rpps=None)}, "no author_rpps"),
])
def test_what_cannot_be_sent_is_refused_naming_the_document(tmp_path, kwargs, message):
    with pytest.raises(PayloadError, match=message) as raised:
        ours(tmp_path, **kwargs)
    assert "DOC0001" in str(raised.value) and "279035121518989" not in str(raised.value)


def _broken(request, xpath, change):
    request = copy.deepcopy(request)
    for element in request.xpath(xpath, namespaces={"rim": xds.RIM}):
        change(element)
    return request


@pytest.mark.parametrize("xpath, change, expected", [
    ("//rim:Slot[@name='NewStatus']//rim:Value", lambda e: setattr(e, "text", APPROVED), "NewStatus missing or not"),
    ("//rim:Slot[@name='OriginalStatus']", lambda e: e.getparent().remove(e), "OriginalStatus missing"),
    ("//rim:Association", lambda e: e.set("targetObject", "entry-1"), "targetObject is not a urn:uuid"),
    ("//rim:Association", lambda e: e.set("sourceObject", TARGET), "sourceObject is not the SubmissionSet"),
    ("//rim:Association", lambda e: e.getparent().remove(e), "no UpdateAvailabilityStatus association"),
    ("//rim:Association", lambda e: e.set("associationType", xds.HAS_MEMBER), "is not UpdateAvailabilityStatus"),
    ("//rim:ExternalIdentifier[@identificationScheme='%s']" % xds.SS_PATIENT_ID, lambda e: e.getparent().remove(e),
     "patientId missing"),
    ("//rim:Classification[@classificationScheme='%s']" % xds.SS_AUTHOR, lambda e: e.getparent().remove(e),
     "author missing"),
    ("//rim:Slot[@name='submissionTime']//rim:Value", lambda e: setattr(e, "text", "22/11/2026"), "submissionTime"),
])
def test_the_structural_check_finds_each_defect(tmp_path, xpath, change, expected):
    errors = update.update_errors(_broken(ours(tmp_path), xpath, change))
    assert any(expected in e for e in errors), errors


def test_a_document_entry_has_no_place_in_an_update(tmp_path):
    request = ours(tmp_path)
    etree.SubElement(request.find(f"{R}RegistryObjectList"), f"{R}ExtrinsicObject", id=TARGET)
    assert "an availability update carries no DocumentEntry" in update.update_errors(request)


def test_update_ids_are_stable_and_distinct():
    root = "1.2.250.1.999.42"
    assert ids.update_submission_set_unique_id(root, "D", 1, DELETED) == ids.update_submission_set_unique_id(root, "D", 1, DELETED)
    distinct = {ids.update_submission_set_unique_id(root, d, v, s)
                for d, v, s in [("D", 1, DELETED), ("D", 2, DELETED), ("D", 1, ARCHIVED), ("E", 1, DELETED)]}
    assert len(distinct) == 4 and all(len(u) <= 64 for u in distinct)
    assert ids.update_submission_set_entry_uuid(root, "D", 1, DELETED).startswith("urn:uuid:")


def test_prepare_gives_a_validated_request_and_its_vihf(tmp_path, sign_credential):
    from connector import prepare

    settings = make_settings(tmp_path)
    site, patient, document = settings.structure.sites[0], make_patient(), make_document(version=2)
    prepared = prepare.withdrawal(settings, sign_credential, site=site, patient=patient, document=document,
                                  target_entry_uuid=TARGET, submission_time=WHEN)
    again = prepare.withdrawal(settings, sign_credential, site=site, patient=patient, document=document,
                               target_entry_uuid=TARGET, submission_time=WHEN)
    assert etree.tostring(prepared.request) == etree.tostring(again.request)  # a resend is the same request
    assert prepared.submission_set_uid == ids.update_submission_set_unique_id("1.2.250.1.999.42", "DOC0001", 2, DELETED)
    assert update.parse_update(prepared.request).changes == (update.StatusChange(TARGET, APPROVED, DELETED),)
    attributes = {a.get("Name"): a for a in prepared.vihf.iter("{urn:oasis:names:tc:SAML:2.0:assertion}Attribute")}
    resource = attributes["urn:oasis:names:tc:xacml:2.0:resource:resource-id"]
    assert "".join(resource.itertext()).strip() == xds.ins_cx(patient)
