"""`export --all` over the samples: every eligible document's request passes every validation, and the
FINESS géo is the same in the VIHF, the submission set, each DocumentEntry and each CDA."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import etree

from connector import samples
from connector.actions import demo
from connector.cli import main
from connector.dmp import mtom
from connector.payload import validate, xds_read
from connector.trust import dsig, vihf
from independent_verifier import with_submission_set, xmlsec_verify

HL7 = "{urn:hl7-org:v3}"
XDSB = "{urn:ihe:iti:xds-b:2007}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    config = demo.prepare_folder(folder, "https://127.0.0.1:1/si-dmp-server/v2/services")
    out = folder / "out"
    result = CliRunner().invoke(main, ["export", "--all", "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    return folder, sorted(p for p in out.iterdir() if p.is_dir())


def _request(path: Path):
    raw = (path / "iti41-request.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    envelope, parts = mtom.decode(headers["Content-Type"], body)
    return envelope, mtom.resolve_documents(envelope, parts)


def _xop_resolved(request, attachments):
    """The XOP infoset: each xdsb:Document holds its bytes in base64 (what the schema describes)."""
    import base64
    import copy

    resolved = copy.deepcopy(request)
    for doc in resolved.iter(f"{XDSB}Document"):
        for child in list(doc):
            doc.remove(child)
        doc.text = base64.b64encode(attachments[doc.get("id")]).decode()
    return resolved


def test_every_eligible_document_is_exported_once(exported):
    _, folders = exported
    eligible = {k for k, r in samples.expected_decisions().items() if r is None}
    cdas = [p.name for f in folders for p in f.glob("cda-*.xml")]
    assert len(cdas) == len(eligible) == len(set(cdas))


def test_each_exported_set_passes_every_validation(exported):
    folder, folders = exported
    ca_pem = (folder / "pki" / "ca.pem").read_bytes()
    for path in folders:
        envelope, attachments = _request(path)
        request = envelope.find(f".//{XDSB}ProvideAndRegisterDocumentSetRequest")
        assert validate.xds_request_errors(_xop_resolved(request, attachments)) == []
        assert xds_read.metadata_errors(request, attachments, require_signature=True) == []
        view = xds_read.parse_request(request)

        token = envelope.find(".//{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
        assert validate.saml_assertion_errors(token) == []
        info = vihf.verify_vihf(token, ca_pem)
        assert xmlsec_verify(etree.tostring(token), folder / "pki" / "ca.pem", id_attribute="ID").ok

        finess = {view.finess_geo} | {e.finess_geo for e in view.entries}
        identifiant = info.attributes["Identifiant_Structure"]
        assert identifiant == "1" + view.finess_geo and len(finess) == 1

        documents = {}
        for entry in view.entries:
            cda = attachments[entry.entry_uuid]
            assert validate.cda_errors(cda) == []
            tree = etree.fromstring(cda)
            facility = tree.find(f".//{HL7}healthCareFacility/{HL7}id").get("extension")
            assert facility == "1" + view.finess_geo
            documents[entry.unique_id] = cda
        signature = attachments[view.signature.entry_uuid]
        assert signature == (path / "signature.xml").read_bytes()
        dsig.verify_submission_set_signature(signature, documents, ca_cert_pem=ca_pem)
        assert validate.xades_errors(signature) == [] and validate.signature_errors(signature) == []
        result = xmlsec_verify(signature, folder / "pki" / "ca.pem",
                               documents=with_submission_set(view.submission_set_uid, documents))
        assert result.ok, result.error
        assert result.manifest_ok() == [f"urn:oid:{uid}" for uid in documents]  # n of n+1: not the "AA==" placeholder
        assert len(result.manifest) == len(documents) + 1


def test_every_xml_id_we_emit_is_an_ncname(exported):
    """Id (XML-DSig, XAdES) and ID (SAML) attributes are xs:ID: NCNames (no leading digit, no ':'). The
    schemas check them where they apply; this checks every one in the envelope and the signature."""
    _, folders = exported
    ncname = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
    seen = 0
    for path in folders:
        envelope, attachments = _request(path)
        view = xds_read.parse_request(envelope.find(f".//{XDSB}ProvideAndRegisterDocumentSetRequest"))
        for root in (envelope, etree.fromstring(attachments[view.signature.entry_uuid])):
            for element in root.iter(etree.Element):
                for name in ("Id", "ID"):
                    if name in element.attrib:
                        seen += 1
                        assert ncname.match(element.get(name)), (element.tag, name, element.get(name))
    assert seen >= 5 * len(folders)  # VIHF ID; Signature, Manifest, SignatureProperty, SignedProperties Ids


def test_a_tampered_document_breaks_the_manifest(exported):
    folder, folders = exported
    envelope, attachments = _request(folders[0])
    view = xds_read.parse_request(envelope.find(f".//{XDSB}ProvideAndRegisterDocumentSetRequest"))
    documents = {e.unique_id: attachments[e.entry_uuid] for e in view.entries}
    uid = next(iter(documents))
    documents[uid] = documents[uid].replace(b"<title>", b"<title>X", 1)
    with pytest.raises(dsig.SignatureError, match=uid.replace(".", r"\.")):
        dsig.verify_submission_set_signature(attachments[view.signature.entry_uuid], documents,
                                             ca_cert_pem=(folder / "pki" / "ca.pem").read_bytes())
    result = xmlsec_verify(attachments[view.signature.entry_uuid], folder / "pki" / "ca.pem",
                           documents=with_submission_set(view.submission_set_uid, documents))
    assert result.ok and len(result.manifest_ok()) == len(documents) - 1
    assert f"urn:oid:{uid}" not in result.manifest_ok()


def test_export_of_a_skipped_document_says_why(exported):
    folder, _ = exported
    result = CliRunner().invoke(main, ["export", "--document", "DOC-012", "--out", str(folder / "o2"),
                                       "--config", str(folder / "dmp-connector.toml")])
    assert result.exit_code == 1 and "PATIENT_OPPOSED" in result.output


def test_each_exported_set_carries_everything_the_gie_example_carries(exported):
    from gie_td21 import missing_structure

    _, folders = exported
    for path in folders:
        envelope, _ = _request(path)
        request = envelope.find(f".//{XDSB}ProvideAndRegisterDocumentSetRequest")
        assert missing_structure(request) == {}, path.name


def test_export_as_sent_reproduces_the_journaled_submission_set(tmp_path):
    """`export --document` rebuilds what a run would send now, for that document alone (another uniqueId than the
    set it was fed in, a new time); `export --as-sent` writes the submission set as the ledger journaled and sent
    it: its uniqueId, its submissionTime, its documents, with a note of what is made anew (VIHF, signature)."""
    import delivery_harness as h
    from connector.payload import hl7

    keys = h.synthetic_store(tmp_path / "store", 2, seed=21, per_patient=(2, 2))  # one patient, two documents
    folder = h.make_folder(tmp_path)
    with h.sandbox(folder) as sb:
        cfg = folder.configure(sb.url)
        assert CliRunner().invoke(main, ["run", "--config", str(cfg)]).exit_code == 0
    (sent_uid, sent_time), = [(r.submission_set_uid, r.submission_time) for r in
                              h.ledger_rows(folder.ledger_url, "SELECT submission_set_uid, submission_time FROM submissions")]
    first, second = sorted(d for d, _ in keys)
    now = CliRunner().invoke(main, ["export", "--document", first, "--out", str(tmp_path / "now"), "--config", str(cfg)])
    assert now.exit_code == 0, now.output
    assert [p.name for p in (tmp_path / "now").iterdir()] != [sent_uid]
    as_sent = CliRunner().invoke(main, ["export", "--document", first, "--as-sent", "--out", str(tmp_path / "sent"),
                                       "--config", str(cfg)])
    assert as_sent.exit_code == 0, as_sent.output
    (out,) = (tmp_path / "sent").iterdir()
    assert out.name == sent_uid and f"{out}: {first} v1, {second} v1" in as_sent.output
    request = (out / "iti41-request.http").read_bytes()
    import datetime as dt

    sent_time = dt.datetime.fromisoformat(str(sent_time)).replace(tzinfo=dt.UTC)  # the ledger's naive UTC
    assert sent_uid.encode() in request and hl7.dtm(sent_time).encode() in request
    assert sorted(p.name for p in out.glob("cda-*.xml")) == [f"cda-{first}-v1.xml", f"cda-{second}-v1.xml"]
    assert "VIHF token" in (out / "AS-SENT.txt").read_text()
    never = CliRunner().invoke(main, ["export", "--document", "NOT-SENT", "--as-sent", "--out", str(tmp_path / "x"),
                                      "--config", str(cfg)])
    assert never.exit_code == 1 and "NOT-SENT: never journaled for sending" in never.output


def _vendored_table(name: str) -> list[dict]:
    """A DMP terminology table as the ANS publishes it (vendored whole: test_terminologies), read here
    without the product's lookups."""
    import csv

    from connector.resources import schemas_dir

    with open(schemas_dir() / "ans-terminologies" / name, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_each_exported_request_speaks_the_gie_dialect(exported):
    """Issue 14's 'done when', on what `export --all` wrote, each value checked at its source: classCode is
    ASS_X16's for the typeCode, contentTypeCode a JDV_J59 code in its own code system, every DocumentEntry's
    legalAuthenticator the CDA's (the signature entry's the first document's), the VIHF carries every
    attribute of the GIE's VIHF_INDIRECTE_signe.xml, its NameID is 8 + RPPS and a physician's role comes with
    its savoir-faire, the XAdES SigningCertificate lists the signer and its CA."""
    from connector.payload import xds
    from connector.resources import schemas_dir
    from connector.trust.xmlsig import SAFE_PARSER

    saml, rim = "{urn:oasis:names:tc:SAML:2.0:assertion}", f"{{{xds.RIM}}}"
    ass_x16 = {row["type_code"]: row["class_code"] for row in _vendored_table("ASS_X16-CorrespondanceType-Classe-DMP.tsv")}
    j59 = {(row["code"], row["code_system"]) for row in _vendored_table("JDV_J59-ContentTypeCode-DMP.tsv")}
    gie = etree.parse(str(schemas_dir() / "gie-dmp-package/vihf/VIHF_INDIRECTE_signe.xml"), SAFE_PARSER).getroot()
    gie_attributes = {a.get("Name") for a in gie.iter(f"{saml}Attribute")}
    _, folders = exported
    entries = 0
    for path in folders:
        envelope, attachments = _request(path)
        request = envelope.find(f".//{XDSB}ProvideAndRegisterDocumentSetRequest")
        view = xds_read.parse_request(request)
        content_type = request.find(f".//{rim}RegistryPackage/{rim}Classification[@classificationScheme='{xds.SS_CONTENT_TYPE}']")
        system = content_type.find(f"{rim}Slot[@name='codingScheme']/{rim}ValueList/{rim}Value").text
        assert (content_type.get("nodeRepresentation"), system) in j59, path.name

        legal = {}
        for eo in request.iter(f"{rim}ExtrinsicObject"):
            slot = eo.find(f"{rim}Slot[@name='legalAuthenticator']/{rim}ValueList/{rim}Value")
            legal[eo.get("id")] = slot.text if slot is not None else None
        first = None
        for entry in view.entries:
            entries += 1
            cda = etree.fromstring(attachments[entry.entry_uuid])
            assert entry.type_code == cda.find(f"{HL7}code").get("code")
            assert entry.class_code == ass_x16[entry.type_code], (path.name, entry.type_code)
            cda_legal = cda.find(f"{HL7}legalAuthenticator/{HL7}assignedEntity/{HL7}id").get("extension")
            assert legal[entry.entry_uuid].split("^")[0] == cda_legal and re.fullmatch(r"8\d{11}", cda_legal)
            first = first or legal[entry.entry_uuid]
        assert len(legal) == len(view.entries) + 1 and legal[view.signature.entry_uuid] == first  # the first document's

        token = envelope.find(f".//{saml}Assertion")
        assert gie_attributes <= {a.get("Name") for a in token.iter(f"{saml}Attribute")}, path.name
        assert re.fullmatch(r"8\d{11}", token.findtext(f"{saml}Subject/{saml}NameID"))
        roles = {(r.get("codeSystem"), r.get("code")) for r in token.iter("{urn:hl7-org:v3}Role")}
        professions = {code for system, code in roles if system == "1.2.250.1.71.1.2.7"}
        savoir_faire = {code for system, code in roles if system == "1.2.250.1.71.4.2.5"}
        assert professions and (savoir_faire if professions & {"10", "21"} else True), roles

        signature = etree.fromstring(attachments[view.signature.entry_uuid])
        certs = signature.findall(".//{http://uri.etsi.org/01903/v1.1.1#}SigningCertificate/"
                                  "{http://uri.etsi.org/01903/v1.1.1#}Cert")
        assert len(certs) == 2, path.name  # the signer and the test PKI's CA, as TD2.1 lists its chain
    assert entries == sum(len(list(f.glob("cda-*.xml"))) for f in folders)
