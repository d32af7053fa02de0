"""The reduced ANS schematron evaluated in the run's own process, without Saxon (`validation.engine = "python"`).

It reads the very stylesheet `validate.stylesheet_path` generates for the connector's own CDAs (warnings, info and
the rules of elements the builder never writes already dropped, value sets already static variables) and runs it
as the ISO skeleton's XSLT does: every element in document order gets the highest-priority rule whose context
matches it, whose `let` variables and assertions are then evaluated in order; the location and message of each
failed assertion are built as the skeleton builds them, so the error strings are the same.

Three layers, fastest first, each giving what XPath 2.0 gives:
- the rules become one XSLT 1.0 stylesheet run by libxslt (in C, ~1.5 ms a CDA): the contexts, and every test and
  variable `schematron_xpath1` can translate to XPath 1.0 with the same meaning (nine tests in ten);
- the tests left that compute on strings (the kit's timestamp check, code lists…) are compiled to Python functions
  (`schematron_atomic`);
- anything else, and any input those functions do not cover, is evaluated by `elementpath` (XPath 2.0 on lxml
  trees), the interpreter's first form, as are the messages of failed assertions.
`tests/test_schematron_python.py` proves the errors equal Saxon's on the complete schematron over a corpus of our
CDAs, the ANS examples and broken variants.

Only for CDAs whose HL7 elements all are ones the builder writes (`validate.GENERATED_ELEMENTS`): the rules
dropped for the others cannot fire on them. Any other CDA (a pass-through CDA from the store using more of the
CDA model) goes to Saxon with the kit's whole schematron, as before.
"""

from __future__ import annotations

import copy
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import elementpath
import elementpath.xpath2._xpath2_functions as _xpath2_functions
from elementpath import ElementNode, XPath2Parser, XPathContext
from lxml import etree

from connector.payload import schematron_atomic as atomic, schematron_xpath1 as xpath1

_XSL = "{http://www.w3.org/1999/XSL/Transform}"
_SVRL = "{http://purl.oclc.org/dsdl/svrl}"
_DOC = re.compile(r"doc\('([^']+)'\)")
# A path into a value set, which depends on nothing but that static document: evaluated once, at compile time.
_VALUE_SET_PATH = re.compile(
    r"\$(dmp-[\w.-]+?-DYNAMIC)((?:/\*/valueSet|//valueSet\[1\])/conceptList/concept/(?:@code|concat\(@code, @codeSystem\)))")
# elementpath's resolve-QName() does not atomize its first argument as XPath 2.0's function conversion rules do
# (an attribute node raised FORG0006, where Saxon reads its value): the kit's `resolve-QName(@xsi:type, .)` is given
# the attribute's value as a string, which is what Saxon passes it (none when there is no attribute).
_RESOLVE_QNAME = re.compile(r"resolve-QName\((@[\w:]+)\s*,")
_CODEPOINT = "http://www.w3.org/2005/xpath-functions/collation/codepoint"
_XPATH1_FUNCTIONS = {
    "not", "count", "string", "string-length", "normalize-space", "concat", "contains", "starts-with", "substring",
    "local-name", "name", "namespace-uri", "true", "false", "boolean",
}

# elementpath translates an XSD regular expression to Python's at every call of matches(): the same patterns
# over and over. The translation is a pure function of its arguments.
if not hasattr(_xpath2_functions.translate_pattern, "cache_info"):
    _xpath2_functions.translate_pattern = functools.lru_cache(maxsize=256)(_xpath2_functions.translate_pattern)


_SHARED_TEST_LENGTH = 300  # a translated test longer than this is compiled once, in a named template
_MEMO_SIZE = 20_000  # answers of attribute-only tests kept (a few MB at most)


class _XPath:
    """An XPath 2.0 expression of the stylesheet, parsed by elementpath when needed: to build the XSLT 1.0 and the
    compiled tests (then released), and for what only elementpath evaluates. Kept parsed, the ~4,000 of them held
    ~14 MB."""

    __slots__ = ("text", "_parser", "_token")

    def __init__(self, parser: XPath2Parser, text: str):
        self.text, self._parser, self._token = text, parser, None

    @property
    def token(self):
        if self._token is None:
            self._token = self._parser.parse(self.text)
        return self._token

    def release(self) -> None:
        self._token = None


@dataclass(frozen=True)
class _Variable:
    name: str
    select: _XPath


@dataclass(frozen=True)
class Assertion:
    id: str  # "<rule priority>.<position in the rule>", stable for a given stylesheet
    test_text: str
    test: _XPath
    message: tuple  # str pieces and _XPath (xsl:value-of), in order


@dataclass(frozen=True)
class _Rule:
    priority: float
    order: int
    match_text: str
    match_xpath1: etree.XPath | None
    match: _XPath | None  # when the pattern is not XPath 1.0
    steps: tuple


class SchematronInterpreter:
    def __init__(self, stylesheet: Path):
        xsl = etree.parse(str(stylesheet)).getroot()
        self._lock = threading.Lock()
        self._namespaces = {k: v for k, v in xsl.nsmap.items() if k}
        # Saxon compares strings by codepoint; elementpath's default follows the locale (and sets it, process-wide).
        # The skeleton writes a version="1.0" stylesheet, which XSLT 2 processors run in XPath 1.0 compatibility
        # mode (a function given several items where it wants one takes the first…).
        # Saxon 12 casts by XSD 1.1's rules (year 0000 is a valid xs:dateTime).
        self._parser = XPath2Parser(namespaces=self._namespaces, default_collation=_CODEPOINT,
                                    compatibility_mode=float(xsl.get("version")) < 2, xsd_version="1.1")
        self._static = {}
        for variable in xsl.findall(f"{_XSL}variable"):
            uri = _DOC.fullmatch(variable.get("select")).group(1)
            self._static[variable.get("name")] = elementpath.get_node_tree(
                etree.parse(uri), self._namespaces)
        self._constants: dict[str, str] = {}  # value-set path -> name of the variable holding its value
        rules = [t for t in xsl.iter(f"{_XSL}template")
                 if re.fullmatch(r"M\d+", t.get("mode") or "") and float(t.get("priority") or -1) >= 0]
        if len({t.get("mode") for t in rules}) > 1:
            raise ValueError(f"{stylesheet}: more than one pattern with error rules; only one is supported")
        self.rules = [self._rule(t, n) for n, t in enumerate(rules)]
        self._context_vars = dict(self._static)
        for expression, name in self._constants.items():
            self._context_vars[name] = self._parser.parse(expression).evaluate(
                XPathContext(etree.ElementTree(etree.Element("x")), variables=dict(self._static)))
        self._assertions = self.assertions
        self._transform = self._compile_xslt1()

    def _compile_xslt1(self) -> etree.XSLT:
        """The rules as one XSLT 1.0 stylesheet for libxslt: each test XPath 1.0 can answer as XPath 2.0 does
        (`schematron_xpath1`) is checked there and reported as "f12 " (assertion 12 failed) when it fails; any other
        as "u12 ", for the compiled tests or `elementpath`, unless the part of a top-level `or` that could be
        translated already holds (elementpath evaluates `or` from the left and stops there too). Each element, in
        document order, writes one `<e>` holding its reports, built by one concat() per rule: libxslt spends ~4 KB
        on each XPath it compiles, and one per test took 8 MB."""
        constants = {name: frozenset(_string(v) for v in (value if isinstance(value, list) else [value]))
                     for name, value in self._context_vars.items() if name.startswith("dmp-const-")}
        if "dmp" in self._namespaces:
            raise ValueError("the stylesheet declares the prefix dmp, which the XSLT 1.0 translation uses")
        self._translated = 0
        self._atomic: dict[int, object] = {}  # assertion number -> compiled function, for some untranslated ones
        self._rule_of = {id(s): r for r in self.rules for s in r.steps}
        self._memo: dict[tuple, bool] = {}
        xsl = etree.Element(f"{_XSL}stylesheet", version="1.0",
                            nsmap={**self._namespaces, "xsl": _XSL[1:-1], "dmp": xpath1.EXTENSIONS})
        start = etree.SubElement(xsl, f"{_XSL}template", match="/")
        etree.SubElement(etree.SubElement(start, "r"), f"{_XSL}apply-templates", select="*", mode="m")
        default = etree.SubElement(xsl, f"{_XSL}template", match="*", mode="m", priority="-10")
        etree.SubElement(default, "e")
        etree.SubElement(default, f"{_XSL}apply-templates", select="*", mode="m")
        shared: dict[str, str] = {}  # test -> named template
        numbers = {id(a): n for n, a in enumerate(self._assertions)}
        for rule in self.rules:
            translator = xpath1.Translator(self._namespaces, constants)
            compiler = atomic.Compiler(self._namespaces, constants)
            match = rule.match_text if rule.match_xpath1 is not None else translator.translate(rule.match.token)[0]
            template = etree.SubElement(xsl, f"{_XSL}template", match=match, priority=repr(rule.priority), mode="m")
            reports = []  # XPath 1.0 strings, each "f12 " (failed) or "u12 " (to evaluate) or ""
            for n, step in enumerate(rule.steps):
                if isinstance(step, _Variable):
                    try:
                        compiler.declare(step.name, f"v{n}", step.select.token)
                    except xpath1.Untranslatable:
                        pass
                    translator.variables.pop(step.name, None)
                    translator.constants.pop(step.name, None)
                    select = step.select.token
                    if select.symbol == "$" and select[0].value in translator.constants:
                        translator.constants[step.name] = translator.constants[select[0].value]  # an alias
                        continue
                    try:
                        text, kind = translator.translate(select)
                    except xpath1.Untranslatable:
                        continue
                    literal = select.value if select.symbol == "(string)" else None
                    translator.variables[step.name] = (f"$v{n}", kind, literal)
                    etree.SubElement(template, f"{_XSL}variable", name=f"v{n}", select=text)
                    continue
                number = str(numbers[id(step)])
                try:
                    test = step.test.token
                    text = translator.translate(test)[0]
                    self._translated += 1
                    report = "f"
                except xpath1.Untranslatable:
                    text, report = self._translated_guard(translator, test), "u"
                    try:
                        self._atomic[int(number)] = (compiler.compile(test), compiler.attributes_read(test))
                    except xpath1.Untranslatable:
                        pass
                literal = f"'{report}{number} '"
                if text is None:
                    reports.append(literal)
                elif len(text) > _SHARED_TEST_LENGTH and "$" not in text:
                    # a long test repeated in many rules (dtr1-1-ANY…) is compiled once, in a named template
                    if text not in shared:
                        shared[text] = f"t{len(shared)}"
                        named = etree.SubElement(xsl, f"{_XSL}template", name=shared[text])
                        etree.SubElement(named, f"{_XSL}if", test=f"not({text})").text = "1"
                    etree.SubElement(etree.SubElement(template, f"{_XSL}variable", name=f"s{n}"),
                                     f"{_XSL}call-template", name=shared[text])
                    reports.append(f"substring({literal}, 1, {len(literal)} * string-length($s{n}))")
                else:
                    reports.append(f"substring({literal}, 1, {len(literal)} * number(not({text})))")
            marker = etree.SubElement(template, "e")
            if reports:
                etree.SubElement(marker, f"{_XSL}value-of", select=f"concat('', {', '.join(reports)})")
            etree.SubElement(template, f"{_XSL}apply-templates", select="*", mode="m")
            for step in rule.steps:
                (step.select if isinstance(step, _Variable) else step.test).release()
            if rule.match is not None:
                rule.match.release()
        return etree.XSLT(xsl, extensions=xpath1.extensions(constants))

    @staticmethod
    def _translated_guard(translator, test) -> str | None:
        """The longest leading run of a top-level `or`'s operands that can be translated, as XPath 1.0, or None."""
        operands = []
        while test.symbol == "or":
            operands.insert(0, test[1])
            test = test[0]
        operands.insert(0, test)
        texts = []
        for operand in operands[:-1] if len(operands) > 1 else []:
            try:
                texts.append(translator.translate(operand)[0])
            except xpath1.Untranslatable:
                break
        return " or ".join(texts) if texts else None

    @property
    def assertions(self) -> list[Assertion]:
        return [s for r in self.rules for s in r.steps if isinstance(s, Assertion)]

    def _xpath(self, text: str):
        def constant(found: re.Match) -> str:
            name = self._constants.setdefault(found.group(0), f"dmp-const-{len(self._constants)}")
            return "$" + name
        return _XPath(self._parser, _atomized(_VALUE_SET_PATH.sub(constant, text)))

    def _rule(self, template: etree._Element, order: int) -> _Rule:
        match = template.get("match")
        xpath1 = None
        functions = set(re.findall(r"([A-Za-z][\w.-]*)\s*\(", re.sub(r"'[^']*'|\"[^\"]*\"", "''", match)))
        if functions <= _XPATH1_FUNCTIONS and "$" not in match:
            try:
                xpath1 = etree.XPath(match, namespaces=self._namespaces)
            except etree.XPathSyntaxError:
                pass
        steps = []
        for child in template:
            if child.tag == f"{_XSL}variable":
                steps.append(_Variable(child.get("name"), self._xpath(child.get("select"))))
            elif child.tag == f"{_XSL}choose":
                failed = child.find(f"{_XSL}otherwise/{_SVRL}failed-assert")
                test = child.find(f"{_XSL}when").get("test")
                steps.append(Assertion(f"{template.get('priority')}.{len(steps)}", failed.get("test"), self._xpath(test),
                                       self._message(failed.find(f"{_SVRL}text"))))
            elif child.tag == f"{_XSL}apply-templates":
                if child.get("select") != "@*|*":
                    raise ValueError(f"rule {match}: unexpected apply-templates {child.get('select')}")
            elif isinstance(child.tag, str):
                raise ValueError(f"rule {match}: unexpected {child.tag}")
        return _Rule(float(template.get("priority")), order, match, xpath1,
                     None if xpath1 is not None else self._xpath(match), tuple(steps))

    def _message(self, text: etree._Element) -> tuple:
        """The pieces of an assertion's svrl:text: literal text (whitespace-only text nodes of the stylesheet
        are stripped, as XSLT does), xsl:text, and xsl:value-of to evaluate."""
        pieces = []

        def add_text(value):
            if value and value.strip():
                pieces.append(value)

        add_text(text.text)
        for child in text:
            if child.tag == f"{_XSL}value-of":
                pieces.append(_XPath(self._parser, _atomized(child.get("select"))))
            elif child.tag == f"{_XSL}text":
                pieces.append(child.text or "")
            elif isinstance(child.tag, str):  # a literal result element (svrl:emph…): its text
                pieces.append("".join(child.itertext()))
            add_text(child.tail)
        return tuple(pieces)

    def errors(self, tree: etree._ElementTree) -> list[str]:
        """Failed assertions as `location: message`, the strings `validate._Schematron.errors` gives."""
        with self._lock:  # calls are serialised, as for the other validators (lxml XPath objects are shared)
            return [f"{location}: {message}" for _, location, message in self.failed(tree)]

    def failed(self, tree: etree._ElementTree) -> list[tuple[str, str, str]]:
        """(assertion id, location, message) of each failed assertion, in the order the XSLT reports them."""
        elements = tree.getroot().iter(etree.Element)
        reports = [(element, report) for element, marker in zip(elements, self._transform(tree).getroot())
                   if marker.text for report in marker.text.split()]
        xpath2, envs, found = None, {}, []
        for element, report in reports:
            kind, number = report[0], int(report[1:])
            assertion = self._assertions[number]
            if kind == "u" and number in self._atomic:
                holds = self._atomic_test(number, element, envs)
                if holds:
                    continue
                if holds is not None:
                    kind = "f"
            xpath2 = xpath2 or _XPath2(self, tree)
            context, node = xpath2.at(element, assertion)
            test = assertion.test.token
            if kind == "u" and test.boolean_value(test.evaluate(context)):
                continue
            found.append((assertion.id, _location(element), self._text(assertion, context, node)))
        return found

    def _atomic_test(self, number: int, element: etree._Element, envs: dict) -> bool | None:
        """A compiled test's answer, None if its inputs are not covered. A test of the element's attributes alone
        (the timestamp check of @value…) is a function of their values: memoised by its signature and their values
        (a document's date is its author's and its legal authenticator's; a patient's birth date recurs)."""
        function, read = self._atomic[number]
        if read is not None:
            key = (read[0], *(element.get(a) for a in read[1]))
            holds = self._memo.get(key)
            if holds is not None:
                return holds
        env = envs.get(element) or envs.setdefault(element, atomic.Env(element))
        try:
            holds = atomic.effective_boolean_value(function(env))
        except atomic.Fallback:
            return None
        if read is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = holds
        return holds

    def _text(self, assertion: Assertion, context: XPathContext, node) -> str:
        out = []
        for piece in assertion.message:
            if isinstance(piece, str):
                out.append(piece)
            else:
                context.item, context.position, context.size, context.axis = node, 1, 1, None
                value = piece.token.evaluate(context)
                values = value if isinstance(value, list) else [] if value is None else [value]
                out.append(" ".join(_string(v) for v in values))
        return " ".join("".join(out).split())


class _XPath2:
    """elementpath's view of one document, built when a report needs it: the context of a rule's element with its
    `let` variables up to a given assertion."""

    def __init__(self, interpreter: SchematronInterpreter, tree: etree._ElementTree):
        self._interpreter = interpreter
        self._context = XPathContext(tree, namespaces=interpreter._namespaces, timezone=atomic.implicit_timezone())
        self._nodes = {node.value: node for node in self._context.root.iter_descendants() if isinstance(node, ElementNode)}

    def at(self, element: etree._Element, assertion: Assertion):
        context, node = self._context, self._nodes[element]
        context.item, context.position, context.size, context.axis = node, 1, 1, None
        context.variables = _LazyVariables(self._interpreter._context_vars)
        at_node = copy.copy(context)
        for step in self._interpreter._rule_of[id(assertion)].steps:
            if step is assertion:
                break
            if isinstance(step, _Variable):
                dict.__setitem__(context.variables, step.name, _Deferred(step.select.token, at_node))
        context.item, context.position, context.size, context.axis = node, 1, 1, None
        return context, node


class _Deferred:
    """A rule's `let` variable, evaluated when first read: Saxon evaluates variables lazily, so an error in one
    that no test reads (e.g. a cardinality error on a doubled element) is never raised, and neither is it here."""

    __slots__ = ("_select", "_context", "_value", "_done")

    def __init__(self, select, context: XPathContext):
        self._select, self._context, self._done = select, context, False

    def value(self):
        if not self._done:
            self._value, self._done = self._select.evaluate(copy.copy(self._context)), True
        return self._value


class _LazyVariables(dict):
    def __getitem__(self, name):
        value = dict.__getitem__(self, name)
        return value.value() if isinstance(value, _Deferred) else value

    def copy(self) -> "_LazyVariables":  # elementpath copies the variables for a quantified expression's own
        return _LazyVariables(self.items())


def _atomized(expression: str) -> str:
    return _RESOLVE_QNAME.sub(r"resolve-QName(\1/string(),", expression)


def _string(value) -> str:
    if hasattr(value, "string_value"):
        return value.string_value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _name(element: etree._Element) -> str:
    """XPath's name(): the prefixed name as written."""
    local = etree.QName(element).localname
    return f"{element.prefix}:{local}" if element.prefix else local


def _location(element: etree._Element) -> str:
    """The skeleton's schematron-get-full-path, shortened as `validate._short_path` does."""
    steps = []
    while element is not None:
        qname = etree.QName(element)
        parent = element.getparent()
        siblings = [e for e in parent.iterchildren(etree.Element)] if parent is not None else [element]
        if qname.namespace:
            same = [e for e in siblings if etree.QName(e).localname == qname.localname]
            step = qname.localname
        else:
            same = [e for e in siblings if _name(e) == element.tag]
            step = element.tag
        if len(same) > 1:
            step += f"[{same.index(element) + 1}]"
        steps.append(step)
        element = parent
    return "/" + "/".join(reversed(steps))


_lock = threading.Lock()
_interpreter: SchematronInterpreter | None = None


def interpreter() -> SchematronInterpreter:
    """The interpreter of the connector's stylesheet, built once per process (~1 s)."""
    global _interpreter
    with _lock:
        if _interpreter is None:
            from connector.payload import validate
            _interpreter = SchematronInterpreter(validate.stylesheet_path(validate.GENERATED_ELEMENTS))
        return _interpreter
