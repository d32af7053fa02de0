"""Broken variants of our CDA aimed at the assertions of the reduced schematron (`schematron_python`), for the
equivalence test (tests/test_schematron_python.py), and the list of the assertions none of them can fire.

For each rule of the reduced stylesheet, its context element is found in our CDA or, when the CDA has none, inserted
(made of elements of `validate.GENERATED_ELEMENTS` only: a CDA with any other HL7 element goes to Saxon with the whole
kit, so the rules it would need never run in-process). For each assertion of the rule, mutations are derived from its
test (and the rule's `let` variables): every attribute it names removed or set to values of the wrong form (and to the
literals it compares with), every element path it names removed, doubled, inserted, nulled or emptied, the context
element doubled (sibling-distinctness checks), emptied, nulled, given text or an xsi:type. Each mutation has a stable
key: the search (`python tests/schematron_mutants.py`, a few minutes) runs the mutations (first the few written by hand
in `EXPLICIT` for the assertions no derived one fires) through the interpreter, keeps
a small set of them that fires every assertion any of them fires (greedy set cover), groups them several to a CDA where
they do not mask each other, and writes their keys to `schematron_mutants.txt`; the test rebuilds just those
(`selected`) and runs each through both engines. The same run writes `schematron_unfired.md`: the assertions no mutation
fires, and the rules the pruning drops, each with why they cannot fire on what the run-time path checks.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from connector.payload import schematron_python, validate

HERE = Path(__file__).parent
KEYS = HERE / "schematron_mutants.txt"
UNFIRED = HERE / "schematron_unfired.md"
NS = {"hl7": validate.HL7_NS, "cda": validate.HL7_NS, "sdtc": "urn:hl7-org:sdtc",
      "lab": "urn:oid:1.3.6.1.4.1.19376.1.3.2", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
_XSL = "{http://www.w3.org/1999/XSL/Transform}"
_XSI_TYPE = f"{{{NS['xsi']}}}type"

# values of the wrong (or of a borderline) form, tried for every attribute a test names
VALUES = (
    "", " ", "x", "a b", "XXX", "0", "-1", "1", "+1", "01", "1.2", "1.02", "1.2.3.x", "2.999", "3.1",
    "1.2.250.1.213.1.1.1.1", "1.2.250.1.71.4.2.2", "1.2.250.1.213.4.1", "12345678-1234-1234-1234-123456789abc",
    "ABC", "A-B", "UNK", "true", "false", "fr-FR", "fr", "FR-fr", "x-klingon",
    "2026", "202611", "20261120", "2026112014", "202611201430", "20261120143000", "20261120143000+0100",
    "20261120143000.5+0100", "20261120143000-0500", "2026112014300", "20261301", "20261132", "20261120250000",
    "19000101", "99991231", "2026-11-20", "20261120143000+01", "-20261120", "20261120143000+2500",
)
XSI_TYPES = ("XX", "CD", "CE", "CS", "II", "ST", "TS", "IVL_TS", "AD", "PN", "ON", "EN", "INT", "BL")


@dataclass(frozen=True)
class Candidate:
    key: str  # stable: "<rule priority> <context location> <mutation>"
    target: str  # the assertion id it was derived for
    base: etree._Element  # our CDA, with the context element inserted if `inserted`
    inserted: bool
    path: str  # of the context element in `base`
    change: Callable[[etree._Element], object]  # the mutation, applied to the context element of a copy

    def make(self) -> etree._Element:
        """The mutated CDA's root (a new copy)."""
        return combined([self])


def combined(mutations: list[Candidate]) -> etree._Element:
    """A copy of our CDA with each mutation applied (all to the same base: those inserting a context, one's)."""
    base = next((m.base for m in mutations if m.inserted), mutations[0].base)
    root = copy.deepcopy(base)
    elements = [root.getroottree().xpath(m.path)[0] for m in mutations]  # found before any change moves them
    for mutation, element in zip(mutations, elements):
        mutation.change(element)
    return root


def _qname(prefixed: str) -> str | None:
    prefix, _, local = prefixed.partition(":")
    namespace = validate.HL7_NS if prefix in ("hl7", "cda", "*") else NS.get(prefix)
    if namespace is None or (namespace == validate.HL7_NS and local not in validate.GENERATED_ELEMENTS):
        return None  # another HL7 element: the CDA would go to Saxon with the whole kit
    return f"{{{namespace}}}{local}"


# --- reading XPath just enough ----------------------------------------------------------------

def _close(text: str, start: int) -> int:
    """The index after the bracket closing the one at `start`."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


_STEP = re.compile(r"(hl7|cda|sdtc|lab|\*):([A-Za-z][\w]*)\s*")


def _steps(text: str, i: int) -> tuple[list[str], int]:
    """The element steps (with predicates) of a path starting at `i`, and where it ends."""
    steps = []
    while True:
        found = _STEP.match(text, i)
        if not found:
            return steps, i
        end = found.end()
        while end < len(text) and text[end] == "[":
            end = _close(text, end)
        steps.append(text[found.start():end].strip())
        if text.startswith("/@", end) or not text.startswith("/", end) or text.startswith("//", end):
            return steps, end
        i = end + 1


def paths(text: str) -> list[tuple[bool, list[str], str | None]]:
    """The element paths an expression names: (absolute, steps, final attribute or None). Predicates are kept."""
    found, i = [], 0
    text = re.sub(r"doc\('[^']*'\)", "doc()", text)
    while i < len(text):
        if text[i] == "'":
            i = text.index("'", i + 1) + 1 if "'" in text[i + 1:] else len(text)
            continue
        absolute = text.startswith("//", i)
        start = i + 2 if absolute else i
        before = text[i - 1] if i else " "
        if (absolute or not (before.isalnum() or before in "@$_-:.")) and _STEP.match(text, start):
            steps, end = _steps(text, start)
            attribute = None
            if text.startswith("/@", end):
                attribute = re.match(r"/@([\w:]+)", text[end:]).group(1)
            found.append((absolute, steps, attribute))
            for step in steps:  # paths inside the predicates too
                if "[" in step:
                    found += paths(step[step.index("["):])
            i = max(end, i + 1)
        else:
            i += 1
    return found


def attributes(text: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"@([A-Za-z][\w:]*)", re.sub(r"'[^']*'", "''", text))))


def literals(text: str) -> list[str]:
    """The short string literals a test compares with (not the value sets' file paths, which vary by machine)."""
    text = re.sub(r"doc\('[^']*'\)", "doc()", text)
    return list(dict.fromkeys(v for v in re.findall(r"'([^']*)'", text) if len(v) < 40 and "\\" not in v))


# --- building elements ------------------------------------------------------------------------

def _donor(base: etree._Element, tag: str) -> etree._Element | None:
    return next(base.iter(tag), None)


def _make(step: str, base: etree._Element) -> etree._Element | None:
    """An element matching `step` (e.g. `hl7:performer[@typeCode = 'PRF'][hl7:assignedEntity]`), made of a copy of
    the same element elsewhere in our CDA when there is one; None if it would need an element we cannot use."""
    name = re.match(r"[\w*]+:[\w]+", step).group(0)
    tag = _qname(name)
    if tag is None:
        return None
    donor = _donor(base, tag)
    element = copy.deepcopy(donor) if donor is not None else etree.Element(tag)
    element.tail = None
    for predicate in _predicates(step):
        if not _satisfy(element, predicate, base):
            return None
    return element


def _predicates(step: str) -> list[str]:
    predicates, i = [], step.find("[")
    while 0 <= i < len(step) and step[i] == "[":
        end = _close(step, i)
        predicates.append(step[i + 1:end - 1].strip())
        i = end
    return predicates


def _satisfy(element: etree._Element, predicate: str, base: etree._Element) -> bool:
    for part in re.split(r"\s+and\s+", predicate):
        part = part.strip()
        if part.startswith("not("):
            inner = part[4:-1]
            if inner.startswith("@"):
                element.attrib.pop(inner[1:], None)
            else:
                steps, _ = _steps(inner, 0)
                for found in element.xpath(inner, namespaces=NS) if steps else []:
                    found.getparent().remove(found)
            continue
        equal = re.fullmatch(r"@([\w:]+)\s*=\s*'([^']*)'", part)
        if equal:
            element.set(equal.group(1), equal.group(2))
            continue
        steps, end = _steps(part, 0)
        if steps and end == len(part):
            if not element.xpath(part, namespaces=NS):
                if _insert(element, steps, base) is None:
                    return False
            continue
        value_set = re.search(r"\$dmp-(voc-[\d.]+-DYNAMIC)", part)
        if value_set and "@code" in part:  # a code of that value set: its first
            concept = next(etree.parse(str(validate._schematron_dir() / "include" / f"{value_set.group(1)}.xml"))
                           .iter("concept"))
            element.set("code", concept.get("code"))
            if "@codeSystem" in part:
                element.set("codeSystem", concept.get("codeSystem"))
            continue
        try:  # anything else: fine if the donor already satisfies it
            if not element.xpath(f"boolean({part})", namespaces=NS):
                return False
        except etree.XPathError:
            return False
    return True


def _insert(parent: etree._Element, steps: list[str], base: etree._Element) -> etree._Element | None:
    """Walk `steps` down from `parent`, making the elements missing: the last element of the path."""
    for step in steps:
        try:
            existing = parent.xpath(step, namespaces=NS)
        except etree.XPathError:
            existing = []
        if existing:
            parent = existing[0]
            continue
        element = _make(step, base)
        if element is None:
            return None
        same = [c for c in parent if c.tag == element.tag]
        if same:
            same[-1].addnext(element)
        else:
            parent.append(element)
        parent = element
    return parent


def _path(element: etree._Element) -> str:
    """`/*[1]/*[14]/*[3]`: found again in a copy whatever its prefixes."""
    steps = []
    while element.getparent() is not None:
        steps.append(f"*[{list(element.getparent().iterchildren(etree.Element)).index(element) + 1}]")
        element = element.getparent()
    return "/*[1]/" + "/".join(reversed(steps)) if steps else "/*[1]"


def _location(element: etree._Element) -> str:
    return schematron_python._location(element)


# --- the mutations ----------------------------------------------------------------------------

def _rule_variables(stylesheet: Path) -> dict[float, dict[str, str]]:
    """Each rule's `let` selects by name, by rule priority: they name what the tests read (@value of a TS…)."""
    xsl = etree.parse(str(stylesheet)).getroot()
    return {float(t.get("priority")): {v.get("name"): v.get("select") for v in t.iter(f"{_XSL}variable")}
            for t in xsl.iter(f"{_XSL}template") if re.fullmatch(r"M\d+", t.get("mode") or "") and t.get("priority")}


def _with_lets(test: str, lets: dict[str, str]) -> str:
    """An assertion's test followed by the selects of the variables it reads (and of those they read)."""
    text, seen = test, set()
    while names := set(re.findall(r"\$([\w.-]+)", text)) & lets.keys() - seen:
        seen |= names
        text += " " + " ".join(lets[n] for n in sorted(names))
    return text


def _contexts(rule, root: etree._Element) -> list[tuple[etree._Element, bool]]:
    """An element the rule applies to, in a copy of our CDA (ours, else one inserted: then True); [] if none can be."""
    tree = etree.ElementTree(copy.deepcopy(root))
    matched = rule.match_xpath1(tree) if rule.match_xpath1 is not None else []
    if matched:
        return [(matched[0], False)]
    else:
        steps, _ = _steps(rule.match_text.lstrip("/"), 0)
        if not steps:
            return []
        top = tree.getroot()
        element = _insert(top, steps[1:], root) if tree.xpath(steps[0].join(["boolean(/", ")"]), namespaces=NS) else None
        if element is None or (rule.match_xpath1 is not None and element not in rule.match_xpath1(tree)):
            return []
        return [(element, True)]


def _mutations(element: etree._Element, text: str, root: etree._Element) -> Iterator[tuple[str, Callable]]:
    """(description, change of a copy's context element) derived from an assertion's text and its rule's lets, the
    likeliest to break it first."""
    named = literals(text)
    yield from _element_mutations()
    for name in attributes(text):
        qualified = _XSI_TYPE if name == "xsi:type" else f"{{{validate.HL7_NS}}}{name[4:]}" if name.startswith("hl7:") else name
        if ":" in qualified and not qualified.startswith("{"):
            continue
        yield f"-@{name}", lambda e, q=qualified: e.attrib.pop(q, None)
        for value in XSI_TYPES if qualified == _XSI_TYPE else named + ["", "XXX", "a b", "1.2.3.x"]:
            yield f"@{name}={value!r}", lambda e, q=qualified, v=value: e.set(q, v)
            yield f"nullFlavor+@{name}={value!r}", lambda e, q=qualified, v=value: (e.set(q, v), e.set("nullFlavor", "UNK"))
    for absolute, steps, attribute in paths(text):
        yield from _path_mutations(absolute, steps, attribute, named, root)
    if "*[" in text:  # a test on any child: each attribute it names set on the first child
        for name in attributes(text):
            if ":" not in name:
                for value in named + ["x x", "BR BR"]:
                    yield f"*[1]/@{name}={value!r}", lambda e, n=name, v=value: _require(next(e.iterchildren(etree.Element), None)).set(n, v)
    for name in attributes(text):
        qualified = f"{{{validate.HL7_NS}}}{name[4:]}" if name.startswith("hl7:") else name
        if ":" in qualified and not qualified.startswith("{"):
            continue
        for value in VALUES:
            yield f"@{name}={value!r}", lambda e, q=qualified, v=value: e.set(q, v)
            yield f"nullFlavor+@{name}={value!r}", lambda e, q=qualified, v=value: (e.set(q, v), e.set("nullFlavor", "UNK"))
        for other in attributes(text):
            if other != name and ":" not in other:
                yield f"-@{name},-@{other}", lambda e, a=qualified, b=other: (e.attrib.pop(a, None), e.attrib.pop(b, None))
                yield f"-@{name},@{other}='x'", lambda e, a=qualified, b=other: (e.attrib.pop(a, None), e.set(b, "x"))
                yield f"@{name}='x',@{other}='x'", lambda e, a=qualified, b=other: (e.set(a, "x"), e.set(b, "x"))
                yield f"@{name}='x',@{other}='x', 2x", lambda e, a=qualified, b=other: (
                    e.set(a, "x"), e.set(b, "x"), e.addnext(copy.deepcopy(e)))
        yield f"@{name}='x', 2x", lambda e, q=qualified: (e.set(q, "x"), e.addnext(copy.deepcopy(e)))
    for absolute, steps, attribute in paths(text):
        if attribute and ":" not in attribute:
            yield from _path_mutations(absolute, steps, attribute, VALUES, root)


def _hl7(tag: str) -> str:
    return f"{{{validate.HL7_NS}}}{tag}"


def _qualifiers_doubled(e: etree._Element) -> None:
    """Every child given a qualifier repeating a token (a `given` added to a name without any)."""
    if next(e.iterchildren(etree.Element), None) is None:
        etree.SubElement(e, _hl7("given")).text = "x"
    for child in e.iterchildren(etree.Element):
        child.set("qualifier", "BR BR")


def _interval(low: str | None, high: str | None, **attributes: str) -> Callable[[etree._Element], object]:
    """An IVL_TS context made of a low and a high of these values (each with these attributes)."""
    def change(e):
        [e.remove(c) for c in list(e)]
        e.attrib.pop("value", None)
        for tag, value in (("low", low), ("high", high)):
            if value is not None:
                etree.SubElement(e, _hl7(tag), value=value, **attributes)
    return change


def _twice(**attributes: str) -> Callable[[etree._Element], object]:
    """The context element and a copy of it, both with these attributes (sibling-distinctness checks)."""
    return lambda e: ([e.set(k, v) for k, v in attributes.items()], e.addnext(copy.deepcopy(e)))


def _code_and_system_joined(extra: str) -> Callable[[etree._Element], object]:
    """@code holding code and system and no @codeSystem: still the value-set code its rule's context asks
    for (it compares concat(@code, @codeSystem)), with an attribute that needs @codeSystem."""
    def change(e):
        e.set("code", e.get("code", "") + e.attrib.pop("codeSystem", ""))
        e.set(extra, "x")
    return change


def _system_holds_code(code: str | None) -> Callable[[etree._Element], object]:
    """@codeSystem holding code and system and @code set to `code` (removed if None): still the value-set code its
    rule's context asks for (it compares concat(@code, @codeSystem))."""
    def change(e):
        e.set("codeSystem", e.attrib.pop("code", "") + e.get("codeSystem", ""))
        if code is not None:
            e.set("code", code)
    return change


def _other_root(*changes: tuple[str, str]) -> Callable[[etree._Element], object]:
    """An id whose @root is not the one a higher-priority rule of its pattern takes, with these attributes."""
    return lambda e: (e.set("root", "1.2.3.4"), [e.set(k, v) for k, v in changes])


# Assertions on a sibling of an IVL_TS's low or high: with two lows (or highs), the effectiveTime's rule (1123) reads
# hl7:low/@value as one string (starts-with($theTSLow, '-')) and raises XPTY0004 before any assertion is reported.
RAISES_FIRST = {a: "hl7:effectiveTime (rule 1123): starts-with() of two @value, XPTY0004"
                for a in ("1122.5", "1122.8", "1121.5", "1121.8")}


# Mutations the generator does not derive from an assertion's text (or not within its budget), written for the
# assertions it left unfired: the search tries these first for their assertion.
EXPLICIT: dict[str, list[tuple[str, Callable[[etree._Element], object]]]] = {
    **{a: [("children @qualifier='BR BR'", _qualifiers_doubled)]
       for a in ("1581.9", "1529.9", "1503.9", "1325.9", "1164.9", "1160.9", "1016.9")},
    "1573.8": [("@value='1' @unit='1', 2x", _twice(value="1", unit="1"))],
    "1122.8": [("@value='2026' @unit='a', 2x", _twice(value="2026", unit="a"))],
    "1121.8": [("@value='2026' @unit='a', 2x", _twice(value="2026", unit="a"))],
    "1122.5": [("2x, first +nullFlavor", lambda e: (e.addnext(copy.deepcopy(e)), e.set("nullFlavor", "UNK")))],
    "1121.5": [("2x, first +nullFlavor", lambda e: (e.addnext(copy.deepcopy(e)), e.set("nullFlavor", "UNK")))],
    "1480.3": [("@code+@codeSystem joined, +@codeSystemName", _code_and_system_joined("codeSystemName"))],
    "1480.5": [("@code+@codeSystem in @codeSystem, no @code", _system_holds_code(None))],
    "1480.32": [("@code+@codeSystem in @codeSystem, no @code", _system_holds_code(None))],
    "1480.33": [("@code+@codeSystem in @codeSystem, @code=''", _system_holds_code(""))],
    "1480.31": [("@code+@codeSystem in @codeSystem, no @code", _system_holds_code(None))],
    "1480.4": [("@code+@codeSystem joined, +@codeSystemVersion", _code_and_system_joined("codeSystemVersion"))],
    "1185.41": [("low @updateMode='A'", _interval("20261120", None, updateMode="A"))],
    "1185.42": [("low = high", _interval("20261120", "20261120"))],
    "1123.42": [("low = high", _interval("20261120", "20261120"))],
    "1185.73": [("low='2026x'", _interval("2026x", None))],
    "1185.123": [("high='2026x'", _interval(None, "2026x"))],
    "1185.124": [("low after high", _interval("20261120", "20261119"))],
    "1161.3": [("@root other, nullFlavor+@identifierName", _other_root(("nullFlavor", "UNK"), ("identifierName", "x")))],
    "1161.4": [("@root other, nullFlavor+@displayable", _other_root(("nullFlavor", "UNK"), ("displayable", "true")))],
    "1161.5": [("@root other, nullFlavor+@reliability", _other_root(("nullFlavor", "UNK"), ("reliability", "ISS")))],
    "1161.6": [("@root other, nullFlavor+@assigningAuthorityName", _other_root(("nullFlavor", "UNK"), ("assigningAuthorityName", "x")))],
    "1161.17": [("@root other, xsi:type='CD'", _other_root((_XSI_TYPE, "CD")))],
    "1161.19": [("@root other, @extension=''", _other_root(("extension", "")))],
}


def _element_mutations() -> Iterator[tuple[str, Callable]]:
    yield "removed", lambda e: e.getparent().remove(e)
    yield "2x", lambda e: e.addnext(copy.deepcopy(e))
    yield "+nullFlavor", lambda e: e.set("nullFlavor", "UNK")
    yield "nullFlavor only", lambda e: (e.attrib.clear(), e.set("nullFlavor", "UNK"))
    yield "emptied", lambda e: (e.attrib.clear(), [e.remove(c) for c in list(e)], setattr(e, "text", None))
    yield "children removed", lambda e: [e.remove(c) for c in list(e)]
    yield "+text", lambda e: setattr(e, "text", "x")
    yield "text only", lambda e: ([e.remove(c) for c in list(e)], setattr(e, "text", "x"))
    yield "no text", lambda e: setattr(e, "text", None)
    yield "2x+nullFlavor", lambda e: (e.addnext(copy.deepcopy(e)), e.set("nullFlavor", "UNK"))
    yield "2x+other nullFlavor", lambda e: e.addnext(_nulled(copy.deepcopy(e)))
    yield "2x bare", lambda e: e.addnext(etree.Element(e.tag))
    yield "+nullFlavor+text", lambda e: (e.set("nullFlavor", "UNK"), setattr(e, "text", "x"))
    for value in ("NI", "OTH", "PINF", "NINF", "MSK", "NA", "x"):
        yield f"nullFlavor={value}", lambda e, v=value: e.set("nullFlavor", v)
    for name in ("value", "code", "root"):
        yield f"+nullFlavor+@{name}", lambda e, n=name: (e.set("nullFlavor", "UNK"), e.set(n, "x"))
    yield "+child", lambda e: etree.SubElement(e, f"{{{validate.HL7_NS}}}id")


def _path_mutations(absolute: bool, steps: list[str], attribute: str | None, values, root) -> Iterator[tuple[str, Callable]]:
    path = ("//" if absolute else "") + "/".join(steps)

    def nodes(e):
        try:
            return (e.getroottree() if absolute else e).xpath(path, namespaces=NS)
        except etree.XPathError:
            return []

    def insert(e):
        start = e.getroottree().getroot() if absolute else e
        rest = steps
        if absolute and steps and etree.QName(start).localname == re.split(r"[:\[]", steps[0])[1]:
            rest = steps[1:]
        return _insert_new(start, rest, root)

    def each(change, first=False):
        def apply(e):
            found = nodes(e)
            if not found:
                raise LookupError(path)
            for x in found[:1] if first else found:
                change(x)
        return apply

    if attribute:
        attr = _XSI_TYPE if attribute == "xsi:type" else attribute
        if ":" in attr and not attr.startswith("{"):
            return
        yield f"{path}/-@{attribute}", each(lambda x: x.attrib.pop(attr, None))
        for value in values:
            yield f"{path}/@{attribute}={value!r}", each(lambda x, v=value: x.set(attr, v), first=True)
            yield f"{path}/@{attribute}={value!r} (all)", each(lambda x, v=value: x.set(attr, v))
        return
    if "[" in steps[-1]:  # the first element of that name made to match the step's predicates
        bare = ("//" if absolute else "") + "/".join(steps[:-1] + [steps[-1][:steps[-1].index("[")]])

        def made_so(e):
            found = (e.getroottree() if absolute else e).xpath(bare, namespaces=NS)
            if not found or not all(_satisfy(found[0], p, root) for p in _predicates(steps[-1])):
                raise LookupError(bare)
        yield f"{bare}[1] made {steps[-1][steps[-1].index('['):]}", made_so
    yield f"-{path}", each(lambda x: x.getparent().remove(x))
    yield f"-{path}[1]", each(lambda x: x.getparent().remove(x), first=True)
    yield f"2x{path}", each(lambda x: x.addnext(copy.deepcopy(x)), first=True)
    yield f"+{path}", lambda e: _require(insert(e))
    yield f"+{path}+nullFlavor", lambda e: _require(insert(e)).set("nullFlavor", "UNK")
    yield f"2x+{path}", lambda e: (_require(insert(e)), _require(insert(e)))
    yield f"{path}[1]+nullFlavor", each(lambda x: x.set("nullFlavor", "UNK"), first=True)
    yield f"{path}+nullFlavor", each(lambda x: x.set("nullFlavor", "UNK"))
    yield f"{path}[1] emptied", each(lambda x: (x.attrib.clear(), [x.remove(c) for c in list(x)], setattr(x, "text", None)), first=True)
    yield f"{path}[1]+text", each(lambda x: setattr(x, "text", "x"), first=True)


def _require(element):
    if element is None:
        raise LookupError("cannot be made of our elements")
    return element


def _nulled(element: etree._Element) -> etree._Element:
    element.set("nullFlavor", "UNK")
    return element


def _insert_new(start: etree._Element, steps: list[str], base: etree._Element) -> etree._Element | None:
    """Insert one more element at the end of `steps` (its ancestors made only where missing)."""
    if not steps:
        return None
    parent = _insert(start, steps[:-1], base) if steps[:-1] else start
    if parent is None:
        return None
    element = _make(steps[-1], base)
    if element is None:
        return None
    same = [c for c in parent if c.tag == element.tag]
    (same[-1].addnext if same else parent.append)(element)
    return element


def candidates(root: etree._Element, interpreter=None) -> Iterator[Candidate]:
    """Every mutation of every assertion of the reduced schematron, in a stable order, lazily (a candidate's tree is
    made only when asked for)."""
    interpreter = interpreter or schematron_python.interpreter()
    lets = _rule_variables(validate.stylesheet_path(validate.GENERATED_ELEMENTS))
    for rule in interpreter.rules:
        for context, inserted in _contexts(rule, root):
            location = _location(context)
            base = context.getroottree().getroot()
            path = _path(context)
            for step in rule.steps:
                if not isinstance(step, schematron_python.Assertion):
                    continue
                text = _with_lets(step.test_text, lets.get(rule.priority, {}))
                seen = set()
                for description, change in [*EXPLICIT.get(step.id, []), *_mutations(context, text, root)]:
                    if description in seen:
                        continue
                    seen.add(description)
                    yield Candidate(f"{_priority(rule)} {location} {description}", step.id, base, inserted, path, change)


def _priority(rule) -> str:
    return f"{rule.priority:g}" if rule.priority != int(rule.priority) else f"{rule.priority:.1f}"


SEPARATOR = " && "


def read_packs() -> list[list[str]]:
    """The mutants the test runs: each a list of mutation keys applied together."""
    lines = KEYS.read_text(encoding="utf-8").splitlines()
    return [line.split(SEPARATOR) for line in lines if line and not line.startswith("#")]


def selected(root: etree._Element) -> Iterator[tuple[str, etree._Element]]:
    """The mutants the search kept (schematron_mutants.txt), rebuilt: (their line, their root)."""
    packs = read_packs()
    wanted = {key for pack in packs for key in pack}
    found = {c.key: c for c in candidates(root) if c.key in wanted}
    if missing := wanted - found.keys():
        raise AssertionError(f"{len(missing)} mutations of schematron_mutants.txt are no longer generated, e.g. "
                             f"{sorted(missing)[0]!r}: run python tests/schematron_mutants.py")
    for pack in packs:
        yield SEPARATOR.join(pack), combined([found[key] for key in pack])


# --- the search -------------------------------------------------------------------------------

def our_cda() -> etree._Element:
    """Our CDA as the equivalence test builds it (tests/test_schematron_python.py's `build`)."""
    import tempfile
    from conftest import make_settings
    from test_schematron_python import build

    structure = make_settings(Path(tempfile.mkdtemp(prefix="mutants-"))).structure
    return validate.parse_untrusted(build(structure)).getroot()


def search(root: etree._Element, budget: int = 150) -> tuple[dict[str, frozenset[str]], set[str]]:
    """Run the mutations through the interpreter, for each assertion until one fires it (at most `budget` tries
    per assertion): the fired assertions of each candidate that fired one not fired before, and all the ids fired.
    A dynamic error counts as an id of its own (the test checks Saxon's)."""
    interpreter = schematron_python.interpreter()
    fired_by: dict[str, frozenset[str]] = {}
    fired: set[str] = set()
    tried: set[str] = set()
    tries: dict[str, int] = {}
    for candidate in candidates(root, interpreter):
        if candidate.target in fired or candidate.key in tried or tries.get(candidate.target, 0) >= budget:
            continue
        tried.add(candidate.key)
        tries[candidate.target] = tries.get(candidate.target, 0) + 1
        try:
            mutant = etree.ElementTree(candidate.make())
        except Exception:  # a mutation that does not apply here (nothing to remove, cannot be made…)
            continue
        try:
            ids = frozenset(a for a, _, _ in interpreter.failed(mutant))
        except Exception as exc:  # a dynamic error: the test checks Saxon fails on it too
            ids = frozenset({f"raised {type(exc).__name__}: {str(exc)[:60]}"})
        if ids - fired:
            fired |= ids
            fired_by[candidate.key] = ids
        if len(tried) % 5000 == 0:
            print(f"{len(tried)} tried, {len(fired)} fired", file=sys.stderr)
    return fired_by, fired


def smallest_cover(fired_by: dict[str, frozenset[str]]) -> list[str]:
    """A small set of candidates firing every id any of them fires (greedy set cover)."""
    left = set().union(*fired_by.values())
    chosen = []
    while left:
        key = max(fired_by, key=lambda k: (len(fired_by[k] & left), -len(chosen)))
        chosen.append(key)
        left -= fired_by[key]
    return sorted(chosen)


def packed(keys: list[str], fired_by: dict[str, frozenset[str]], root: etree._Element, size: int = 12) -> list[list[str]]:
    """The chosen mutations grouped, several to a CDA, where they apply to elements none of which contains another
    and the group still fires every assertion its members fire alone: fewer CDAs for both engines to check."""
    interpreter = schematron_python.interpreter()
    by_key = {c.key: c for c in candidates(root, interpreter) if c.key in set(keys)}
    rules: dict[str, list[str]] = {}
    for key in keys:
        rules.setdefault(key.split()[0], []).append(key)
    interleaved = [k for i in range(max(map(len, rules.values()), default=0)) for ks in rules.values() for k in ks[i:i + 1]]
    packs: list[list[str]] = []
    for key in interleaved:
        mutation = by_key[key]
        for pack in [p for p in packs if len(p) < size][-8:]:
            members = [by_key[k] for k in pack]
            if mutation.inserted and any(m.inserted and m.base is not mutation.base for m in members):
                continue
            if any(_nested(mutation.path, m.path) for m in members):
                continue
            try:
                ids = {a for a, _, _ in interpreter.failed(etree.ElementTree(combined(members + [mutation])))}
            except Exception:
                continue
            if ids >= set().union(fired_by[key], *(fired_by[k] for k in pack)):
                pack.append(key)
                break
        else:
            packs.append([key])
    return packs


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _outside(names) -> list[str]:
    return sorted({n for n in names if n not in validate.GENERATED_ELEMENTS})


def _hl7_names(text: str) -> set[str]:
    text = re.sub(r"'[^']*'", "''", text)
    return set(re.findall(r"(?<![@\w])(?:hl7|cda|\*):([A-Za-z]\w*)", text))


def why_unfired(rule, assertion, has_context: bool, lets: dict[str, str]) -> tuple[str, str]:
    """Why no mutation fires an assertion, from its rule's context and its test: (reason, detail)."""
    if assertion.id in RAISES_FIRST:
        return ("it needs a second sibling of its context element, on which the parent's rule raises a dynamic error "
                "first (both engines report that error instead)", RAISES_FIRST[assertion.id])
    if not has_context:
        outside = _outside(_hl7_names(rule.match_text))
        if outside:
            return ("its rule's context names an HL7 element outside GENERATED_ELEMENTS in a predicate the pruning "
                    "does not read as requiring it: the generator could not make that context of our elements",
                    ", ".join("hl7:" + n for n in outside))
        return "its rule's context could not be made of our elements by the generator", ""
    outside = _outside(_hl7_names(_with_lets(assertion.test_text, lets)))
    if outside:
        return ("it fails only if the document has an HL7 element outside GENERATED_ELEMENTS, named in its test: "
                "such a CDA is checked by Saxon with the whole kit", ", ".join("hl7:" + n for n in outside))
    last = _steps(rule.match_text.lstrip("/"), 0)[0][-1]
    if "not(@nullFlavor)" in last and "@nullFlavor" in assertion.test_text:
        return "it fails only with a nullFlavor on its context element, which its rule's context excludes ([not(@nullFlavor)])", ""
    fixed = dict(re.findall(r"@(\w+)\s*=\s*'([^']*)'", last))
    for name, value in fixed.items():
        if re.search(rf"@{name}\)?\s*=\s*\(?'{re.escape(value)}'", assertion.test_text):
            return "it restates its rule's context: an element that breaks it is not in that context", f"@{name} = '{value}'"
    if re.search(r"\bor \* or\b", assertion.test_text) and (child := re.search(r"\[(hl7:\w+)\]$", last)):
        return "it restates its rule's context: an element that breaks it is not in that context", f"[{child.group(1)}] (a child: * holds)"
    for child in re.findall(r"count\((hl7:\w+)\)\s*>=\s*1", assertion.test_text):
        if f"[{child}]" in last:
            return "it restates its rule's context: an element that breaks it is not in that context", f"[{child}]"
    read = set(attributes(assertion.test_text)) - {"nullFlavor", "displayName"}
    if read and read <= fixed.keys() and not _hl7_names(assertion.test_text):
        return ("it reads only attributes its rule's context fixes to a value that passes it (and @nullFlavor or "
                "@displayName, which cannot fail it then)", ", ".join(f"@{n}: {fixed[n]}" for n in sorted(read)))
    if "<=" in assertion.test_text or "$elmcount" in assertion.test_text:
        return "a cardinality our mutations (removing, doubling, inserting the element) did not break (not proven unreachable)", ""
    return "no generated mutation fired it (not proven unreachable)", ""


def unfired_report(fired: set[str], root: etree._Element) -> str:
    interpreter = schematron_python.interpreter()
    contexts = {_priority(r): bool(_contexts(r, root)) for r in interpreter.rules}
    lets = _rule_variables(validate.stylesheet_path(validate.GENERATED_ELEMENTS))
    groups: dict[str, dict[str, list[str]]] = {}
    total = 0
    for rule in interpreter.rules:
        for step in rule.steps:
            if isinstance(step, schematron_python.Assertion):
                total += 1
                if step.id not in fired:
                    reason, detail = why_unfired(rule, step, contexts[_priority(rule)], lets.get(rule.priority, {}))
                    groups.setdefault(reason, {}).setdefault(detail, []).append(step.id)
    lines = ["# Schematron assertions the equivalence corpus does not fire", "",
             "Written by `python tests/schematron_mutants.py` (do not edit): the assertions of the reduced stylesheet "
             "(`schematron_python.interpreter().assertions`, ids `<rule priority>.<position>`) that neither the broken "
             "variants of tests/test_schematron_python.py nor the targeted mutants of schematron_mutants.txt fire, "
             "grouped by why. The test checks this list against what its corpus fires.", "",
             f"{len(fired)} of {total} assertions fired; {total - len(fired)} not:", ""]
    for reason, details in sorted(groups.items(), key=lambda g: -sum(map(len, g[1].values()))):
        lines += [f"## {sum(map(len, details.values()))}: {reason}", ""]
        for detail, ids in sorted(details.items()):
            lines += [f"- {detail + ': ' if detail else ''}{' '.join(ids)}"]
        lines.append("")
    return "\n".join(lines) + pruning_report()


def pruning_report() -> str:
    """What `validate._keep_errors_only` and `_drop_rules_outside` leave out of the complete stylesheet, and why."""
    import tempfile
    directory = Path(tempfile.mkdtemp(prefix="strucmin-"))
    (directory / validate._TYPE_CODE_VOC).write_bytes(validate._type_code_voc())
    xsl = etree.fromstring(validate._generate_stylesheet(directory, None, reduce=False).encode("utf-8"))
    svrl = "{http://purl.oclc.org/dsdl/svrl}"
    roles: dict[str, int] = {}
    for failed in xsl.iter(f"{svrl}failed-assert", f"{svrl}successful-report"):
        kind = "report" if failed.tag.endswith("successful-report") else f"assert of role {validate._role(failed) or 'none'}"
        roles[kind] = roles.get(kind, 0) + 1
    validate._keep_errors_only(xsl)
    kept = sum(1 for _ in xsl.iter(f"{svrl}failed-assert"))
    dropped: dict[tuple, list[int]] = {}
    for template in xsl.iter(f"{_XSL}template"):
        if not re.fullmatch(r"M\d+", template.get("mode") or "") or template.get("priority") is None:
            continue
        alternatives = validate._required_names(template.get("match") or "", template.nsmap)
        if alternatives is None or any(names <= validate.GENERATED_ELEMENTS for names in alternatives):
            continue
        outside = tuple(sorted(min((names - validate.GENERATED_ELEMENTS for names in alternatives), key=len)))
        counts = dropped.setdefault(outside[:1], [0, 0])
        counts[0] += 1
        counts[1] += sum(1 for _ in template.iter(f"{svrl}failed-assert"))
    lines = ["", "# What the pruning leaves out", "",
             "The complete stylesheet (the kit's schematron as the ISO skeleton compiles it) has "
             + ", ".join(f"{n} {k}s" for k, n in sorted(roles.items())) + ". `validate._keep_errors_only` removes the "
             "asserts of role warning or info and the successful reports: they never make an error (the connector "
             f"reports failed asserts of role error, fatal or none only, under either engine); {kept} asserts remain.", "",
             "`validate._drop_rules_outside` then removes, for the connector's own CDAs, each rule whose every "
             "context alternative needs an HL7 element outside GENERATED_ELEMENTS (named along its path, or in a predicate "
             "that tests such an element exists, as `[hl7:streetAddressLine]`): such a rule matches no element of a "
             "CDA all of whose HL7 elements are in GENERATED_ELEMENTS, and any other CDA is sent to Saxon with the "
             "whole kit (`validate._schematron_for`). Rules dropped, by the first element outside they need:", "",
             "| needs (first outside GENERATED_ELEMENTS) | rules | their error asserts |", "|---|---|---|"]
    for names, (rules, asserts) in sorted(dropped.items(), key=lambda d: (-d[1][0], d[0])):
        lines.append(f"| hl7:{names[0] if names else '?'} | {rules} | {asserts} |")
    return "\n".join(lines) + "\n"


def listed_unfired() -> set[str]:
    """The assertion ids schematron_unfired.md lists as not fired."""
    text = UNFIRED.read_text(encoding="utf-8").split("\n# What the pruning leaves out")[0]
    return {i for line in text.splitlines() if line.startswith("- ") for i in line[2:].rsplit(": ", 1)[-1].split()}


def fired_by_corpus(mutants) -> set[str]:
    """The assertion ids the interpreter finds failed in any of these CDAs (those it raises on aside)."""
    interpreter = schematron_python.interpreter()
    fired = set()
    for mutant in mutants:
        try:
            fired.update(a for a, _, _ in interpreter.failed(etree.ElementTree(mutant)))
        except Exception:
            pass
    return fired


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from test_schematron_python import _mutants

    base = our_cda()
    fired_by, fired = search(base)
    raising = [k for k, ids in fired_by.items() if any(i.startswith("raised") for i in ids)]
    keys = smallest_cover({k: v for k, v in fired_by.items() if k not in raising})
    packs = packed(keys, fired_by, base) + [[k] for k in raising]  # a dynamic error alone in its CDA
    KEYS.write_text("# written by python tests/schematron_mutants.py: the mutants the equivalence test runs, one a line,\n"
                    "# each made of the mutations (rule priority, context element, change) joined by &&\n"
                    + "".join(SEPARATOR.join(p) + "\n" for p in packs), encoding="utf-8")
    corpus = fired_by_corpus([root for _, root in selected(base)]) | fired_by_corpus(_mutants(base))
    UNFIRED.write_text(unfired_report(corpus, base), encoding="utf-8")
    print(f"{len(corpus)} assertions fired; the targeted ones by {len(keys)} mutations in {len(packs)} mutants",
          file=sys.stderr)
