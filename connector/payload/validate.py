"""Validation against the official schemas vendored in `schemas/`: the ANS CDA XSD and the ANS
"structuration minimale" schematron for CDA documents, the IHE XDS.b / ebRS schemas for ITI-41
requests, the OASIS schema for SAML assertions, XML-DSig and XAdES for the submission-set signature.

Each schema or stylesheet is compiled once per process, lazily, under a lock; validation calls are
serialised per validator (lxml schema objects keep their error log, and concurrent Saxon transforms
gave no speed-up when measured), so all functions are safe to call from several threads.

The schematron (ART-DECOR, queryBinding xslt2) is turned into XSLT with lxml's shipped ISO skeleton
(include -> abstract-expand -> queryBinding "xslt" -> iso_svrl_for_xslt1.xsl) and run by Saxon (XSLT 3)
as an XSLT 2.0 stylesheet, so that its tests keep their published XPath 2.0 meaning (the skeleton's
XSLT 2 edition is in no registry we can install from; its output differs only in the version it declares
and in message formatting).
That XSLT is then reduced to what can report an error (no warnings, no closed-template pattern) and, for
the connector's own CDAs, to the rules whose context only needs elements it writes; value sets are read
into static variables, once at compile time rather than by doc() for each document. A test proves the
reduced stylesheets report exactly the errors of the complete one. Generating them takes ~10 s, so they
are cached on disk, keyed by a hash of their inputs; Saxon's compilation (~1 s and ~200 MB for our CDAs;
SaxonC-HE cannot export it) is paid once per process.

With `validation.engine = "python"` the reduced stylesheet of the connector's own CDAs is interpreted in-process
instead (`schematron_python.py`), with the same errors.

Error strings never carry patient data: schematron messages have their value-of fragments that could
echo document values redacted at generation time, and XSD messages have quoted values redacted.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import lxml
import lxml.isoschematron
from lxml import etree

from connector.payload.errors import CDA_INVALID, PayloadError
from connector.resources import ans_kit, schemas_dir

_RECIPE_VERSION = "7"  # bump when the generation below changes, to invalidate cached stylesheets
_SCH = "{http://purl.oclc.org/dsdl/schematron}"
_SVRL = "{http://purl.oclc.org/dsdl/svrl}"
_SVS = "{urn:ihe:iti:svs:2008}"
HL7_NS = "urn:hl7-org:v3"
_TYPE_CODE_VOC = "voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml"  # JDV_J07, referenced but not shipped by the kit

# value-of expressions in assertion messages that cannot echo document values (kept as is);
# any other (e.g. @value, @extension, $theTS) is replaced by "…".
_SAFE_VALUE_OF = {
    "namespace-uri-from-QName(resolve-QName(@xsi:type,.))",
    "local-name-from-QName(resolve-QName(@xsi:type,.))",
    "local-name()", "name()", "$name", "@use", "@hl7:use", "@codeSystem", "@codeSystemName",
    "@typeCode", "@classCode", "@moodCode", "@qualifier", "$urlScheme",
    "string-length(@root)", "string-length(@extension)",
}


def _safe_parser() -> etree.XMLParser:
    """A parser for foreign XML: no entity expansion, no network, no DTD. `huge_tree` lifts libxml2's 10 MB cap
    on one text node, which a CDA's base64 body passes from a PDF of ~7.5 MB (`rules.max_document_bytes` allows
    20 MiB): the bytes are capped before they are parsed, and without entities nothing expands beyond them."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, load_dtd=False)


def parse_untrusted(xml: bytes) -> etree._ElementTree:
    """Parse foreign XML safely; raise ValueError (without echoing content) on a DOCTYPE or bad XML.

    A DOCTYPE is refused outright: CDA, ebXML and SAML never need one, and it is the carrier of
    entity bombs and external entities (XXE)."""
    try:
        tree = etree.ElementTree(etree.fromstring(xml, _safe_parser()))
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML (line {exc.lineno})") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise ValueError("a DOCTYPE is not allowed")
    return tree


# --- XSD ----------------------------------------------------------------------------------------

_XML_XSD = "SAML-Toolkits-python3-saml/src/onelogin/saml2/schemas/xml.xsd"
_XMLDSIG_XSD = "XML-Security-signxml/signxml/schemas/xmldsig-core-schema.xsd"
_REMOTE_SCHEMAS = {  # remote schemaLocations of the vendored XSDs -> local copies
    "http://www.w3.org/2001/xml.xsd": _XML_XSD,
    "https://www.w3.org/2001/xml.xsd": _XML_XSD,
    "http://www.w3.org/TR/2002/REC-xmldsig-core-20020212/xmldsig-core-schema.xsd": _XMLDSIG_XSD,  # XAdES 1.1.1
}


class _LocalSchemas(etree.Resolver):
    def resolve(self, url, pubid, context):
        local = _REMOTE_SCHEMAS.get(url)
        return self.resolve_filename(str(schemas_dir() / local), context) if local else None


def _compile_xsd(text_or_path: str | Path) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_LocalSchemas())
    if isinstance(text_or_path, Path):
        doc = etree.parse(str(text_or_path), parser)
    else:
        doc = etree.ElementTree(etree.fromstring(text_or_path.encode(), parser, base_url=str(schemas_dir()) + "/"))
    return etree.XMLSchema(doc)


def _importing(imports: dict[str, Path]) -> str:
    """A driver schema importing each namespace from its local file: one compile for several roots."""
    lines = "".join(f'<xs:import namespace="{ns}" schemaLocation="{p.as_uri()}"/>' for ns, p in imports.items())
    return f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">{lines}</xs:schema>'


def _ebxml_driver() -> str:
    """One schema importing every ITI-41/ITI-18 message root (xdsb, lcm, query, rs)."""
    ebrs = schemas_dir() / "IHE-IT-Infrastructure/schema/ebRS"
    imports = {
        "urn:ihe:iti:xds-b:2007": schemas_dir() / "IHE-IT-Infrastructure/schema/IHE/XDS.b_DocumentRepository.xsd",
        "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0": ebrs / "lcm.xsd",
        "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0": ebrs / "query.xsd",
        "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0": ebrs / "rs.xsd",
    }
    return _importing(imports)


_COMPILE_LOCK = threading.Lock()


class _XsdValidator:
    """A lazily compiled XMLSchema, used under a lock (lxml keeps the error log on the object)."""

    def __init__(self, source):
        self._source = source  # callable -> Path or schema text
        self._schema: etree.XMLSchema | None = None
        self._lock = threading.Lock()

    def errors(self, tree) -> list[str]:
        with self._lock:
            if self._schema is None:
                with _COMPILE_LOCK:  # libxml2 fails when two schemas sharing imports compile at once
                    self._schema = _compile_xsd(self._source())
            if self._schema.validate(tree):
                return []
            return [f"{_readable_path(tree, e.path)}: {_redact_xsd(e.message)}" for e in self._schema.error_log]


def _readable_path(tree: etree._ElementTree, path: str | None) -> str:
    """libxml2's `/*/*[14]/*[6]` as `/ClinicalDocument/recordTarget[1]/…` (local names, positions)."""
    try:
        prefixes = {k: v for k, v in tree.getroot().nsmap.items() if k}
        found = tree.xpath(path, namespaces=prefixes) if path else []
    except etree.XPathError:
        found = []
    if not found or not isinstance(found[0], etree._Element):
        return path or "/"
    steps, node = [], found[0]
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        same = [n for n in parent if n.tag == node.tag] if parent is not None else [node]
        steps.append(name if len(same) == 1 else f"{name}[{same.index(node) + 1}]")
        node = parent
    return "/" + "/".join(reversed(steps))


def _redact_xsd(message: str) -> str:
    message = re.sub(r"The value '[^']*'", "The value '…'", message)
    return re.sub(r": '[^']*' is not a valid value", ": '…' is not a valid value", message)


def _hl7_and_saml_driver() -> str:
    """The ANS CDA schema and the SAML assertion schema, compiled once for both: VIHF attribute values are
    HL7 elements typed by xsi:type="CE" (role, purposeofuse), which must resolve to be validated, and the
    CDA schema is the largest we load (compiled twice, it cost ~15 MB per process)."""
    imports = {
        "urn:oasis:names:tc:SAML:2.0:assertion":
            schemas_dir() / "SAML-Toolkits-python3-saml/src/onelogin/saml2/schemas/saml-schema-assertion-2.0.xsd",
        "urn:hl7-org:v3": ans_kit() / "infrastructure/cda/CDA_extended.xsd",
    }
    return _importing(imports)


XADES_111 = "http://uri.etsi.org/01903/v1.1.1#"
XADES_132 = "http://uri.etsi.org/01903/v1.3.2#"
_DS = "{http://www.w3.org/2000/09/xmldsig#}"


def _signature_driver() -> str:
    """XML-DSig with both XAdES versions we can sign with: 1.1.1 as the GIE ships it with its example kit
    (there `CertDigest` holds `xades:DigestMethod`/`xades:DigestValue`), 1.3.2 as ETSI publishes it."""
    return _importing({
        "http://www.w3.org/2000/09/xmldsig#": schemas_dir() / _XMLDSIG_XSD,
        XADES_111: schemas_dir() / "gie-dmp-package/schema/XAdES-v1.1.1.xsd",
        XADES_132: schemas_dir() / "XML-Security-signxml/signxml/xades/schemas/XAdES01903v132-201601.xsd",
    })


def _gie_ebrs_driver() -> str:
    """The DMP operator's own copy of the ebRS schemas (GIE package, `gie-dmp-package/schema/ebRS`): identical to
    IHE's but for their CVS headers and a local xml.xsd; the ITI-57 requests (lcm:SubmitObjectsRequest) are
    checked against them, as the task asks of them."""
    ebrs = schemas_dir() / "gie-dmp-package/schema/ebRS"
    return _importing({"urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0": ebrs / "lcm.xsd",
                       "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0": ebrs / "rs.xsd"})


_hl7_and_saml_xsd = _XsdValidator(_hl7_and_saml_driver)  # CDA documents and VIHF assertions
_ebxml_xsd = _XsdValidator(_ebxml_driver)  # ITI-41 / ITI-18 messages
_signature_xsd = _XsdValidator(_signature_driver)  # submission-set signatures (XML-DSig + XAdES)
_gie_ebrs_xsd = _XsdValidator(_gie_ebrs_driver)  # ITI-57 update requests and their replies

_EBXML_ROOTS = {
    "{urn:ihe:iti:xds-b:2007}ProvideAndRegisterDocumentSetRequest",
    "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest",
    "{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}AdhocQueryRequest",
    "{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}AdhocQueryResponse",
    "{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryResponse",
}


def _tree(element_or_bytes) -> etree._ElementTree:
    if isinstance(element_or_bytes, (bytes, bytearray)):
        return parse_untrusted(bytes(element_or_bytes))
    if isinstance(element_or_bytes, etree._ElementTree):
        return element_or_bytes
    if element_or_bytes.getparent() is None:  # a document's root: validated in place
        return element_or_bytes.getroottree()
    # validate a detached copy (with the namespaces in scope): the element may sit inside a SOAP envelope
    return etree.ElementTree(copy.deepcopy(element_or_bytes))


def xds_request_errors(element_or_bytes) -> list[str]:
    """Schema errors of an ITI-41 request (xdsb:ProvideAndRegisterDocumentSetRequest) or of an
    lcm:SubmitObjectsRequest, query:AdhocQueryRequest/Response or rs:RegistryResponse; [] if valid."""
    try:
        tree = _tree(element_or_bytes)
    except ValueError as exc:
        return [str(exc)]
    if tree.getroot().tag not in _EBXML_ROOTS:
        return [f"unexpected root element {tree.getroot().tag}"]
    return _ebxml_xsd.errors(tree)


def update_request_errors(element_or_bytes) -> list[str]:
    """Schema errors of an ITI-57 request (lcm:SubmitObjectsRequest) or of its rs:RegistryResponse, against the
    GIE's ebRS schemas; [] if valid."""
    try:
        tree = _tree(element_or_bytes)
    except ValueError as exc:
        return [str(exc)]
    if tree.getroot().tag not in ("{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest",
                                  "{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryResponse"):
        return [f"unexpected root element {tree.getroot().tag}"]
    return _gie_ebrs_xsd.errors(tree)


def saml_assertion_errors(element_or_bytes) -> list[str]:
    """Schema errors of a saml:Assertion (VIHF) against the OASIS SAML 2.0 schema; [] if valid."""
    try:
        tree = _tree(element_or_bytes)
    except ValueError as exc:
        return [str(exc)]
    if tree.getroot().tag != "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion":
        return [f"unexpected root element {tree.getroot().tag}"]
    return _hl7_and_saml_xsd.errors(tree)


def _signature_tree(element_or_bytes) -> tuple[etree._ElementTree | None, list[str]]:
    """(the ds:Signature's tree, []) or (None, why it is not one)."""
    try:
        tree = _tree(element_or_bytes)
    except ValueError as exc:
        return None, [str(exc)]
    if tree.getroot().tag != f"{_DS}Signature":
        return None, [f"unexpected root element {tree.getroot().tag}"]
    return tree, []


def xades_errors(element_or_bytes) -> list[str]:
    """Schema errors of the XAdES QualifyingProperties of a ds:Signature (1.1.1 or 1.3.2, each against its
    own schema); [] if valid. The rest of the signature is not checked here: the GIE's own TD2.1 example,
    which the DMP accepts, has a ds:Signature Id that is not an XML ID (a UUID starting with a digit)."""
    tree, errors = _signature_tree(element_or_bytes)
    if errors:
        return errors
    found = [qp for ns in (XADES_111, XADES_132) for qp in tree.getroot().iterfind(f"{_DS}Object/{{{ns}}}QualifyingProperties")]
    if len(found) != 1:
        return [f"expected one XAdES 1.1.1 or 1.3.2 QualifyingProperties in a ds:Object, found {len(found)}"]
    return _signature_xsd.errors(etree.ElementTree(copy.deepcopy(found[0])))


def signature_errors(element_or_bytes) -> list[str]:
    """Schema errors of a whole submission-set ds:Signature (XML-DSig, its XAdES QualifyingProperties, and
    so every Id an XML ID); [] if valid. Our own output's check, stricter than the DMP (see xades_errors).
    Its SignatureProperties object is left out: IHE DSG's purposeOfSignature SignatureProperty holds only
    text (as the DMP clients and the GIE's TD2.1 send it), which XML-DSig's SignaturePropertyType does not
    allow; TD2.1 puts it in no namespace, where ds:Object's lax wildcard skips it."""
    tree, errors = _signature_tree(element_or_bytes)
    if errors:
        return errors
    tree = etree.ElementTree(copy.deepcopy(tree.getroot()))
    for properties in tree.getroot().findall(f"{_DS}Object/{_DS}SignatureProperties"):
        properties.getparent().remove(properties)
    return _signature_xsd.errors(tree)


# --- schematron -------------------------------------------------------------------------------

def _schematron_dir() -> Path:
    return ans_kit() / "schematrons/profils/structurationMinimale"


def _cache_root() -> Path:
    """Where derived files go: $DMP_CONNECTOR_CACHE_DIR, systemd's $CACHE_DIRECTORY, the XDG cache,
    or (if none is writable) a private temporary directory."""
    for candidate in (
        os.environ.get("DMP_CONNECTOR_CACHE_DIR"),
        (os.environ.get("CACHE_DIRECTORY") or "").split(":")[0] or None,
        os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dmp-connector"),
    ):
        if candidate:
            try:
                Path(candidate).mkdir(parents=True, exist_ok=True)
                if os.access(candidate, os.W_OK):
                    return Path(candidate)
            except OSError:
                pass
    return Path(tempfile.mkdtemp(prefix="dmp-connector-"))


def _inputs_hash() -> str:
    h = hashlib.sha256(f"{_RECIPE_VERSION}|{lxml.__version__}|{ans_kit()}".encode())
    for path in sorted(_schematron_dir().rglob("*")) + [ans_kit() / "jeuxDeValeurs/JDV_J07_XdsTypeCode_CISIS.xml"]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _type_code_voc() -> bytes:
    """JDV_J07 in ART-DECOR's `voc-*.xml` layout (valueSets/valueSet/conceptList/concept), as the
    schematron's doc('include/voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml') expects it."""
    j07 = etree.parse(str(ans_kit() / "jeuxDeValeurs/JDV_J07_XdsTypeCode_CISIS.xml"), _safe_parser())
    root = etree.Element("{urn:hl7-org:v3}valueSets", nsmap={"hl7": "urn:hl7-org:v3"})
    vs = etree.SubElement(root, "valueSet", id="1.2.250.1.213.1.1.5.471", name="JDV_J07_XdsTypeCode_CISIS")
    concepts = etree.SubElement(vs, "conceptList")
    for c in j07.iter(f"{_SVS}Concept"):
        etree.SubElement(concepts, "concept", code=c.get("code"), codeSystem=c.get("codeSystem"),
                         displayName=c.get("displayName") or "")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _generate_stylesheet(directory: Path, elements: frozenset[str] | None, *, reduce: bool = True) -> str:
    """The SVRL-producing XSLT of the structuration minimale schematron (text), reduced (unless told
    not to: the tests' reference) to what can yield an error: see `_keep_errors_only` and, when
    `elements` is given, `_drop_rules_outside`."""
    skeleton = Path(lxml.isoschematron.__file__).parent / "resources/xsl/iso-schematron-xslt1"
    step = lambda name: etree.XSLT(etree.parse(str(skeleton / name)))  # noqa: E731
    schema = etree.parse(str(_schematron_dir() / "ASIP-STRUCT-MIN-StrucMin.sch"))
    schema = step("iso_abstract_expand.xsl")(step("iso_dsdl_include.xsl")(schema))
    root = schema.getroot()
    root.set("queryBinding", "xslt")  # the XSLT1 skeleton only accepts xslt; Saxon runs the XPath 2 tests
    for value_of in root.iter(f"{_SCH}value-of"):
        if value_of.get("select") not in _SAFE_VALUE_OF:
            value_of.getparent().replace(value_of, _text_element(value_of))
    svrl = step("iso_svrl_for_xslt1.xsl")(schema, **{"generate-fired-rule": "'false'"}).getroot()
    # The schematron is published with queryBinding "xslt2": its tests are XPath 2.0. A version="1.0"
    # stylesheet would make Saxon evaluate them in XPath 1.0 compatibility mode (first item of a sequence,
    # NaN instead of type errors...): run it as XSLT 2.0, as an xslt2 skeleton's output would be.
    svrl.set("version", "2.0")
    if reduce:
        _keep_errors_only(svrl)
    if reduce and elements is not None:
        _drop_rules_outside(svrl, elements)
    if reduce:
        _load_value_sets_once(svrl)
    xsl = etree.tostring(svrl, encoding="unicode")
    # ART-DECOR value sets are loaded relative to the schematron: point them at the kit, and the one
    # the kit lacks at our generated copy.
    xsl = xsl.replace(f"doc('include/{_TYPE_CODE_VOC}')", f"doc('{(directory / _TYPE_CODE_VOC).as_uri()}')")
    return xsl.replace("doc('include/", f"doc('{(_schematron_dir() / 'include').as_uri()}/")


_DOC_CALL = re.compile(r"doc\('([^']+)'\)")
_XPATH_ATTRIBUTES = ("test", "select", "match")


def _load_value_sets_once(xsl: etree._Element) -> None:
    """Read each value set into a static variable, which Saxon evaluates once when it compiles the
    stylesheet, instead of calling doc() in each test, which reloads the file for every document (it
    took 4 of the 7 ms of a transform). Only the XSLT's own XPath changes, not the messages' text."""
    variables: dict[str, str] = {}  # uri -> variable named after the file, the same in every variant
    as_variable = lambda call: "$" + variables.setdefault(call.group(1), "dmp-" + Path(call.group(1)).stem)  # noqa: E731
    for element in xsl.iter(f"{_XSL}*"):
        for name in _XPATH_ATTRIBUTES:
            if "doc(" in (element.get(name) or ""):
                element.set(name, _DOC_CALL.sub(as_variable, element.get(name)))
    for position, (uri, name) in enumerate(variables.items()):  # their uris are resolved with the others
        xsl.insert(position, etree.Element(f"{_XSL}variable", name=name, static="yes", select=f"doc('{uri}')"))


def _text_element(value_of: etree._Element) -> etree._Element:
    text = etree.Element(f"{_SCH}emph")
    text.text = "…"
    text.tail = value_of.tail
    return text


_XSL = "{http://www.w3.org/1999/XSL/Transform}"
ERROR_ROLES = (None, "", "error", "fatal")  # failed assertions we report; warnings and info are not errors


def _role(report: etree._Element) -> str | None:
    for attribute in report.iter(f"{_XSL}attribute"):
        if attribute.get("name") == "role":
            return attribute.text
    return report.get("role")


def _keep_errors_only(xsl: etree._Element) -> None:
    """Remove what can never produce a reported error, so that each document costs less: assertions of
    role warning or info, successful reports (never reported), the patterns left without any assertion
    (the kit's closed-template checks are all warnings) and the SVRL skeleton's empty default-mode
    passes. Which rule fires on which node is unchanged (no rule is removed), so the errors are too."""
    for report in list(xsl.iter(f"{_SVRL}failed-assert", f"{_SVRL}successful-report")):
        if report.tag == f"{_SVRL}successful-report" or _role(report) not in ERROR_ROLES:
            check = report.getparent()  # xsl:if (report) or xsl:otherwise (assert) of an xsl:choose
            check = check.getparent() if check.tag == f"{_XSL}otherwise" else check
            _remove(check)
    modes_with_errors = {t.get("mode") for t in xsl.iter(f"{_XSL}template") if t.find(f".//{_SVRL}failed-assert") is not None}
    for template in list(xsl.iter(f"{_XSL}template")):
        if re.fullmatch(r"M\d+", template.get("mode") or "") and template.get("mode") not in modes_with_errors:
            _remove(template)
    for apply in list(xsl.iter(f"{_XSL}apply-templates")):
        mode = apply.get("mode") or ""
        in_active_pattern = apply.getparent().tag == f"{_SVRL}active-pattern"
        if in_active_pattern or (re.fullmatch(r"M\d+", mode) and mode not in modes_with_errors):
            _remove(apply)


def _drop_rules_outside(xsl: etree._Element, elements: frozenset[str]) -> None:
    """Remove the rules whose context needs an HL7 element not named in `elements`: they cannot fire on
    a document whose HL7 elements all are (see `_schematron_for`), so its errors are the same."""
    for template in list(xsl.iter(f"{_XSL}template")):
        if not re.fullmatch(r"M\d+", template.get("mode") or "") or template.get("priority") is None:
            continue
        alternatives = _required_names(template.get("match") or "", template.nsmap)
        if alternatives is not None and not any(names <= elements for names in alternatives):
            _remove(template)


def _required_names(pattern: str, nsmap: dict) -> list[set[str]] | None:
    """For each alternative of a rule's context, the HL7 elements a node it matches needs in its document:
    every element named along its path is a node the path goes through, and so is every element named in
    a predicate that only tests that a relative path of elements exists (`[hl7:streetAddressLine]`, not
    `[not(hl7:streetAddressLine)]`). None if an alternative holds a function call or parentheses outside
    its predicates, whose effect is not read here."""
    pattern = re.sub(r"'[^']*'|\"[^\"]*\"", "''", pattern)  # literals may hold brackets or bars
    alternatives = []
    for alternative in _outside_brackets(pattern, "|"):
        names = _path_names(alternative, nsmap)
        if names is None:
            return None
        alternatives.append(names)
    return alternatives


_ELEMENT_PATH = re.compile(r"\s*[A-Za-z][\w.-]*:[A-Za-z][\w.-]*(\s*/\s*[A-Za-z][\w.-]*:[A-Za-z][\w.-]*)*\s*")


def _path_names(path: str, nsmap: dict) -> set[str] | None:
    """The HL7 elements a node `path` selects needs (see `_required_names`), None if it cannot tell."""
    predicates: list[str] = []
    outside = "".join(_outside_brackets(path, None, predicates))
    if "(" in outside:
        return None
    steps = re.finditer(r"(@|attribute::)?\b([A-Za-z][\w.-]*):([A-Za-z][\w.-]*)", outside)
    names = {s.group(3) for s in steps if not s.group(1) and nsmap.get(s.group(2)) == HL7_NS}
    for predicate in predicates:  # an existence test of element steps: true only if they all exist
        if _ELEMENT_PATH.fullmatch("".join(_outside_brackets(predicate, None, []))):
            names |= _path_names(predicate, nsmap) or set()
    return names


def _outside_brackets(text: str, separator: str | None, predicates: list[str] | None = None) -> list[str]:
    """`text` split at each `separator` outside brackets and parentheses, or (separator None) the parts of
    `text` outside its top-level predicates, whose contents are appended to `predicates`."""
    parts, depth, current = [], 0, []
    for char in text:
        if depth == 0 and char == separator:
            parts.append("".join(current))
            current = []
            continue
        if char == "[" and depth == 0 and separator is None:
            parts.append("".join(current))
            current = []
        depth += (char in "[(") - (char in ")]")
        if char == "]" and depth == 0 and separator is None:
            predicates.append("".join(current)[1:])
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _remove(element: etree._Element) -> None:
    """Remove an element, keeping its tail text with the previous sibling or the parent."""
    parent, tail = element.getparent(), element.tail
    if tail and tail.strip():
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(element)


# The HL7 elements of a CDA as payload/cda.py builds it (a test keeps the two in step). A document using
# only these is checked by a stylesheet without the ~500 rules whose context needs another element
# (telecoms, participants, street address lines...): 120 rules of 619, 1 s to compile instead of 8 s.
GENERATED_ELEMENTS = frozenset({
    "ClinicalDocument", "realmCode", "typeId", "templateId", "id", "code", "title", "effectiveTime",
    "confidentialityCode", "languageCode", "setId", "versionNumber", "recordTarget", "patientRole", "patient",
    "name", "family", "given", "administrativeGenderCode", "birthTime", "birthplace", "place", "addr", "county",
    "author", "time", "assignedAuthor", "assignedPerson", "representedOrganization", "custodian",
    "assignedCustodian", "representedCustodianOrganization", "legalAuthenticator", "signatureCode",
    "assignedEntity", "documentationOf", "serviceEvent", "low", "high", "performer",
    "standardIndustryClassCode", "componentOf", "encompassingEncounter", "location", "healthCareFacility",
    "component", "nonXMLBody", "text", "relatedDocument", "parentDocument",
})


def stylesheet_path(elements: frozenset[str] | None = None) -> Path:
    """The generated schematron XSLT (and its value set), built once and reused across processes:
    for any CDA (`elements` None), or for CDAs whose HL7 elements are all in `elements`."""
    directory = _cache_root() / f"strucmin-{_inputs_hash()}"
    variant = "all" if elements is None else hashlib.sha256("|".join(sorted(elements)).encode()).hexdigest()[:12]
    xsl_path = directory / f"strucmin-{variant}.xsl"
    if xsl_path.is_file():
        return xsl_path
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / _TYPE_CODE_VOC, _type_code_voc())
    _write_atomically(xsl_path, _generate_stylesheet(directory, elements).encode("utf-8"))
    return xsl_path


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _Schematron:
    """One compiled stylesheet; Saxon objects are created and used under one lock."""

    def __init__(self, stylesheet):
        self._stylesheet = stylesheet  # callable -> Path, called at the first use
        self._lock = threading.Lock()
        self._processor = None
        self._executable = None

    def _compile(self) -> None:
        from saxonche import PySaxonProcessor  # heavy: imported on first use

        self._processor = PySaxonProcessor(license=False)
        compiler = self._processor.new_xslt30_processor()
        self._executable = compiler.compile_stylesheet(stylesheet_file=str(self._stylesheet()))

    def warm_up(self) -> None:
        with self._lock:
            if self._executable is None:
                self._compile()

    def svrl(self, tree: etree._ElementTree) -> etree._Element:
        text = etree.tostring(tree, encoding="unicode")
        with self._lock:
            if self._executable is None:
                self._compile()
            node = self._processor.parse_xml(xml_text=text)
            out = self._executable.transform_to_string(xdm_node=node)
        return etree.fromstring(out.encode("utf-8"))

    def errors(self, tree: etree._ElementTree) -> list[str]:
        """Failed assertions of role error (or without role), as `location: message`."""
        errors = []
        for failed in self.svrl(tree).iter(f"{_SVRL}failed-assert"):
            if failed.get("role") in ERROR_ROLES:
                text = " ".join("".join(failed.find(f"{_SVRL}text").itertext()).split())
                errors.append(f"{_short_path(failed.get('location') or '')}: {text}")
        return errors


_generated = _Schematron(lambda: stylesheet_path(GENERATED_ELEMENTS))  # the connector's own CDAs
_any = _Schematron(stylesheet_path)  # pass-through CDAs from the store, which may use any CDA element


_GENERATED_TAGS = frozenset(f"{{{HL7_NS}}}{name}" for name in GENERATED_ELEMENTS)


def _schematron_for(tree: etree._ElementTree) -> _Schematron:
    hl7_tags = {e.tag for e in tree.iter(f"{{{HL7_NS}}}*")}
    return _generated if hl7_tags <= _GENERATED_TAGS else _any


ENGINES = ("saxon", "python")


def warm_up(engine: str = "saxon") -> None:
    """Compile the schematron of the connector's own CDAs now (~1 s), e.g. while the run scans the store."""
    if engine == "python":
        from connector.payload import schematron_python
        schematron_python.interpreter()
    else:
        _generated.warm_up()


def schematron_errors(tree: etree._ElementTree, engine: str = "saxon") -> list[str]:
    """The errors the structuration minimale schematron finds in a CDA. With the "python" engine, a CDA using
    only elements the builder writes is checked in this process without Saxon (`schematron_python`); any other
    still goes to Saxon with the whole kit."""
    schematron = _schematron_for(tree)
    if engine == "python" and schematron is _generated:
        from connector.payload import schematron_python
        return schematron_python.interpreter().errors(tree)
    return schematron.errors(tree)


def _short_path(location: str) -> str:
    """`/*[local-name()='ClinicalDocument' and namespace-uri()='urn:hl7-org:v3']/…` -> `/ClinicalDocument/…`."""
    return re.sub(r"\*\[local-name\(\)='([^']+)' and namespace-uri\(\)='[^']*'\]", r"\1", location)


def cda_errors(xml: bytes, *, schematron: bool = True, engine: str = "saxon") -> list[str]:
    """All errors of a CDA document: ANS CDA XSD, then (unless told not to) the structuration minimale
    schematron. [] = valid."""
    return _start_cda_errors(xml, schematron, None, engine)()


def _start_cda_errors(xml: bytes, schematron: bool, process, engine: str = "saxon",
                      tree: etree._ElementTree | None = None) -> Callable[[], list[str]]:
    """The XSD errors now, the schematron's now or, given a `SchematronProcess`, in that process: a callable
    that gives them all (waiting for that process if need be). `tree`: the tree `xml` was written from (see
    `cda.build_cda_tree`), checked instead of a parse of `xml`; the check may change its body."""
    errors, tree = _xsd_checked(xml) if tree is None else _xsd_checked_tree(tree)
    if tree is None or not schematron:
        return lambda: errors
    _shrink_body(tree)
    if process is None:
        found = schematron_errors(tree, engine)
        answer = lambda: found  # noqa: E731
    else:
        answer = process.submit(tree).result
    return lambda: errors + [f"schematron {e}" for e in answer()]


def _xsd_checked(xml: bytes) -> tuple[list[str], etree._ElementTree | None]:
    """The XSD errors of a CDA, and its tree when it is one the schematron can look at."""
    try:
        tree = parse_untrusted(xml)
    except ValueError as exc:
        return [str(exc)], None
    return _xsd_checked_tree(tree)


def _xsd_checked_tree(tree: etree._ElementTree) -> tuple[list[str], etree._ElementTree | None]:
    if tree.getroot().tag != "{urn:hl7-org:v3}ClinicalDocument":  # the schema also accepts SAML roots
        return [f"XSD /: the root element is {etree.QName(tree.getroot()).localname}, not ClinicalDocument"], None
    return [f"XSD {e}" for e in _hl7_and_saml_xsd.errors(tree)], tree


def _shrink_body(tree: etree._ElementTree) -> None:
    """Replace a non-blank base64 body by a short one before the schematron: its rules only test that
    the text is non-empty (dtr1-1-BIN), and handing megabytes to Saxon triples the validation time."""
    for text in tree.getroot().iterfind("{urn:hl7-org:v3}component/{urn:hl7-org:v3}nonXMLBody/{urn:hl7-org:v3}text"):
        body = text.text  # one copy of the megabytes, not three
        if body and not body.isspace() and len(text) == 0:
            text.text = "AAAA"


def validate_cda(xml: bytes, document_id: str, *, schematron: bool = True) -> None:
    """Raise PayloadError(CDA_INVALID) naming the document and its first errors if the CDA is invalid."""
    start_cda_validation(xml, document_id, schematron=schematron)()


def start_cda_validation(xml: bytes, document_id: str, *, schematron: bool = True, process=None,
                         engine: str = "saxon", tree: etree._ElementTree | None = None):
    """`validate_cda` in two steps: the XSD now, the schematron now or, given a `SchematronProcess`, in that
    process while the caller goes on. Returns the second step: a callable that raises as `validate_cda` does.
    `tree`: see `_start_cda_errors`."""
    all_errors = _start_cda_errors(xml, schematron, process, engine, tree)

    def finish() -> None:
        if found := all_errors():
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            raise PayloadError(CDA_INVALID, f"{document_id}: {'; '.join(found[:3])}{more}")

    return finish
