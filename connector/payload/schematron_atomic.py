"""XPath 2.0 over the attributes of one element and strings, compiled to Python functions.

The tests XPath 1.0 cannot express (`schematron_xpath1`) are mostly string computations on one attribute: the
kit's timestamp check (27 `let` variables of `if`, `replace`, `substring`, `castable as`… on `@value`), the code
lists of `tokenize(@code)`. `elementpath` takes ~20 µs per token for them; compiled here, each function does what
`elementpath`'s own implementation of it does, on Python strings and integers, for the inputs it covers, and raises
`Fallback` for any other (a sequence where one item is expected, a number where a string is, …), in which case the
caller evaluates the test with `elementpath`. `castable as` is `elementpath`'s own cast, memoised.
"""

from __future__ import annotations

import datetime
import functools
import operator as operator_module
import re
import threading

from elementpath import XPath2Parser, XPathContext
from elementpath.datatypes import UntypedAtomic
from elementpath.regex import translate_pattern
from lxml import etree

from connector.payload.schematron_xpath1 import Translator, Untranslatable


class Fallback(Exception):
    """An input the compiled function does not cover: evaluate the test with elementpath."""


class Env:
    """One evaluation: the rule's element, the values of its variables computed so far, the context item."""

    __slots__ = ("element", "values", "item")

    def __init__(self, element: etree._Element):
        self.element, self.values, self.item = element, {}, None


class Node(str):
    """An attribute, by its value: a string where one is expected (XPath 2.0 atomizes it to xs:untypedAtomic, compared
    as a string), a node for the effective boolean value (true even when empty)."""
    __slots__ = ()


def effective_boolean_value(sequence: tuple) -> bool:
    if isinstance(sequence, frozenset):
        raise Fallback
    if not sequence:
        return False
    item = sequence[0]
    if isinstance(item, (Node, etree._Element)):
        return True
    if len(sequence) > 1:
        raise Fallback
    return item != "" if isinstance(item, str) else bool(item)


def _one_string(sequence: tuple) -> str:
    """An argument of type xs:string? : '' for (), the string (an attribute's value); anything else is not covered."""
    if not sequence:
        return ""
    if len(sequence) > 1 or not isinstance(sequence[0], str):
        raise Fallback
    return str(sequence[0])


def _comparable(item):
    """An item as general and value comparisons see it: an attribute is a string."""
    if type(item) is Node:
        return str(item)
    if isinstance(item, etree._Element) or type(item) is bool:
        raise Fallback
    return item


def _one_integer(sequence: tuple) -> int:
    if len(sequence) != 1 or type(sequence[0]) is not int:
        raise Fallback
    return sequence[0]


_CAST_PARSER = XPath2Parser(xsd_version="1.1")
_CAST_ROOT = etree.ElementTree(etree.Element("x"))
_CAST_CONTEXT = XPathContext(_CAST_ROOT, variables={"v": ""})
_CAST_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8192)
def _castable(value: str, type_name: str) -> bool:
    """elementpath's `castable as` of a string (the digits of timestamps repeat: memoised), in one context made once
    (making it took half the time)."""
    with _CAST_LOCK:
        _CAST_CONTEXT.variables["v"] = value
        return _cast_test(type_name).evaluate(_CAST_CONTEXT)


@functools.lru_cache(maxsize=None)
def _cast_test(type_name: str):
    return _CAST_PARSER.parse(f"$v castable as {type_name}")


def _regex(pattern: str, flags: str = "", empty_allowed: bool = False) -> re.Pattern:
    value = 0
    for c in flags:
        if c not in "smix":
            raise Untranslatable(f"flag {c}")
        value |= getattr(re, c.upper())
    try:
        compiled = re.compile(translate_pattern(pattern, value, "1.1"), value)
    except Exception as exc:
        raise Untranslatable(f"regex: {exc}") from None
    if compiled.search("") and not empty_allowed:
        raise Untranslatable("a pattern matching the empty string")  # an error in XPath 2.0
    return compiled


class Compiler:
    """Compiles a rule's variables (in order, `declare`) and tests (`compile`)."""

    def __init__(self, namespaces: dict[str, str], constants: dict[str, frozenset]):
        self.namespaces = namespaces
        self.constants = constants
        self.variables: dict[str, str] = {}  # XPath name -> key of its value in Env.values
        self.literals: dict[str, str] = {}  # XPath name of a variable bound to a string literal -> the string
        self.paths = Translator(namespaces, {})
        self._tokens: dict[str, object] = {}  # XPath name of a compiled variable -> its token
        self._compiled: dict[str, object] = {}

    def declare(self, name: str, key: str, token) -> None:
        self.variables.pop(name, None)
        self.literals.pop(name, None)
        if token.symbol == "(string)":
            self.literals[name] = token.value
        function = self.compile(token)  # raises Untranslatable: the variable stays unknown here

        def value(env: Env):
            values = env.values
            if key not in values:
                item, env.item = env.item, None
                try:
                    values[key] = function(env)
                finally:
                    env.item = item
            return values[key]

        self.variables[name] = key
        self._compiled[key] = value
        self._tokens[name] = token

    def attributes_read(self, token) -> tuple[str, tuple[str, ...]] | None:
        """(signature, attributes) when an expression reads nothing but attributes of the element (no path, no node,
        no implicit timezone): its value is then a function of theirs alone, the same for every expression of that
        signature (its text and that of the variables it reads: the kit repeats its checks in many rules).
        None otherwise."""
        found: set[str] = set()
        definitions: set[str] = set()

        def walk(t, parent: str) -> bool:
            if t.symbol == "$":
                name = t[0].value if len(t) else t.value
                if name in self.constants:
                    return True
                if name not in self._tokens:
                    return False
                definitions.add(f"${name} := {self._tokens[name].source}")
                return walk(self._tokens[name], "")
            if t.symbol == "@":
                if t[0].symbol == "(name)":
                    found.add(t[0].value)
                    return True
                if t[0].symbol == ":" and len(t[0]) == 2 and t[0][1].symbol == "(name)":
                    found.add(f"{{{self.namespaces[t[0][0].value]}}}{t[0][1].value}")
                    return True
                return False
            if t.symbol == "(name)":
                return parent in ("$", ":")
            if t.symbol == ":":
                return parent == "castable"
            if t.symbol not in _COMPILERS or t.symbol in ("[", ".", "dateTime", "date"):
                return False
            return all(walk(c, t.symbol) for c in t)

        if not walk(token, ""):
            return None
        return "; ".join([token.source, *sorted(definitions)]), tuple(sorted(found))

    def compile(self, token):
        """A function Env -> tuple of items (str, int, bool, Node, element) for an elementpath token."""
        if _constructed(token) and _context_free(token):
            return self._opaque(token)
        symbol = token.symbol
        if symbol in ("/", "//", "(name)", ":", "*") or (symbol == "[" and _is_path(token)):
            try:
                return self._path(token)
            except Untranslatable:
                if symbol != "[":
                    raise  # else a predicate XPath 1.0 cannot express, compiled below
        method = _COMPILERS.get(symbol)
        if method is None:
            raise Untranslatable(symbol)
        return method(self, token)

    def _string(self, token):
        value = (token.value,)
        return lambda env: value

    def _integer(self, token):
        value = (int(token.value),)
        return lambda env: value

    def _attribute(self, token):
        name = token[0]
        if name.symbol == "(name)":
            key = name.value
        elif name.symbol == ":" and len(name) == 2 and name[0].symbol == "(name)" and name[1].symbol == "(name)":
            key = f"{{{self.namespaces[name[0].value]}}}{name[1].value}"
        else:
            raise Untranslatable("an attribute test")

        def attribute(env: Env):
            item = env.item
            if item is not None and not isinstance(item, etree._Element):
                raise Fallback  # an attribute of an atomic value: an error
            value = (env.element if item is None else item).get(key)
            return () if value is None else (Node(value),)
        return attribute

    def _path(self, token):
        """A path of nodes XPath 1.0 can select (libxml2), from the element (or the node of a predicate)."""
        if token.symbol == "/" and len(token) == 2 and (token[1].symbol == "@" or token[1].symbol in _FUNCTIONS):
            # P/@a or P/f(…): the attributes or the values of each node in turn, in document order
            nodes, attribute = self._path(token[0]), self.compile(token[1])

            def attributes(env: Env):
                found, item = [], env.item
                try:
                    for node in nodes(env):
                        env.item = node
                        found.extend(attribute(env))
                finally:
                    env.item = item
                return tuple(found)
            return attributes
        text, kind = self.paths.translate(token)
        if kind not in ("node1", "nodes") or text.startswith("@") or "/@" in text or "attribute::" in text:
            raise Untranslatable("a path to attributes")
        xpath = etree.XPath(text, namespaces=self.namespaces, smart_strings=False)

        def path(env: Env):
            item = env.item
            if item is not None and not isinstance(item, etree._Element):
                raise Fallback
            found = xpath(env.element if item is None else item)
            if not all(isinstance(n, etree._Element) for n in found):
                raise Fallback  # text nodes…
            return tuple(found)
        return path


    def _variable(self, token):
        name = token[0].value if len(token) else token.value
        if name in self.constants:
            constant = self.constants[name]
            return lambda env: constant  # a frozenset: only compared with =, below
        if name not in self.variables:
            raise Untranslatable(f"${name}")
        return self._compiled[self.variables[name]]

    def _context_item(self, token):
        def item(env: Env):
            if env.item is None:
                raise Fallback  # the element itself: not covered
            return (env.item,)
        return item

    def _parenthesis(self, token):
        if not len(token):
            return lambda env: ()
        return self.compile(token[0])

    def _comma(self, token):
        left, right = self.compile(token[0]), self.compile(token[1])

        def sequence(env):
            a, b = left(env), right(env)
            if isinstance(a, frozenset) or isinstance(b, frozenset):
                return frozenset(a) | frozenset(b)
            return a + b
        return sequence

    def _if(self, token):
        condition, then, otherwise = (self.compile(t) for t in token)
        return lambda env: then(env) if effective_boolean_value(condition(env)) else otherwise(env)

    def _and(self, token):
        left, right = self.compile(token[0]), self.compile(token[1])
        return lambda env: (effective_boolean_value(left(env)) and effective_boolean_value(right(env)),)

    def _or(self, token):
        left, right = self.compile(token[0]), self.compile(token[1])
        return lambda env: (effective_boolean_value(left(env)) or effective_boolean_value(right(env)),)

    def _function(self, token):
        name, arguments = token.symbol, [self.compile(t) for t in token]
        if name in ("empty", "exists", "not") and len(arguments) == 1:
            argument = arguments[0]
            if name == "not":
                return lambda env: (not effective_boolean_value(argument(env)),)
            if name == "empty":
                return lambda env: (len(argument(env)) == 0,)
            return lambda env: (len(argument(env)) > 0,)
        if name in ("starts-with", "ends-with", "contains") and len(arguments) == 2:
            method = {"starts-with": str.startswith, "ends-with": str.endswith, "contains": str.__contains__}[name]
            a, b = arguments
            return lambda env: (method(_one_string(a(env)), _one_string(b(env))),)
        if name == "string-length" and len(arguments) == 1:
            a = arguments[0]
            return lambda env: (len(_one_string(a(env))),)
        if name == "normalize-space" and len(arguments) == 1:
            a = arguments[0]
            return lambda env: (" ".join(_one_string(a(env)).strip().split()),)
        if name == "concat" and len(arguments) >= 2:
            return lambda env: ("".join(_one_string(a(env)) for a in arguments),)
        if name == "substring" and len(arguments) in (2, 3):
            return self._substring(arguments)
        if name == "string-join" and len(arguments) == 2:
            items, separator = arguments

            def string_join(env):
                values = items(env)
                if isinstance(values, frozenset) or not all(isinstance(v, str) for v in values):
                    raise Fallback
                return (_one_string(separator(env)).join(str(v) for v in values),)
            return string_join
        if name == "replace" and len(token) == 3 and token[1].symbol == token[2].symbol == "(string)":
            return self._replace(arguments[0], token[1].value, token[2].value)
        if name == "tokenize" and len(token) == 2 and token[1].symbol == "(string)":
            pattern, text = _regex(token[1].value), arguments[0]

            def tokenize(env):
                value = _one_string(text(env))
                return tuple(v for v in pattern.split(value) if v is not None and pattern.search(v) is None) if value else ()
            return tokenize
        if name == "distinct-values" and len(arguments) == 1:
            a = arguments[0]

            def distinct_values(env):
                values = a(env)
                if isinstance(values, frozenset) or not all(isinstance(v, str) for v in values):
                    raise Fallback
                return tuple(dict.fromkeys(str(v) for v in values))
            return distinct_values
        if name == "matches" and len(token) in (2, 3):
            literal = lambda t: t.value if t.symbol == "(string)" else self.literals.get(t[0].value) if t.symbol == "$" else None  # noqa: E731
            pattern, flags = literal(token[1]), literal(token[2]) if len(token) == 3 else ""
            if pattern is None or flags is None:
                raise Untranslatable("a pattern that is not a literal")
            compiled, text = _regex(pattern, flags, empty_allowed=True), arguments[0]
            return lambda env: (compiled.search(_one_string(text(env))) is not None,)
        if name == "count" and len(arguments) == 1:
            a = arguments[0]

            def count(env):
                values = a(env)
                if isinstance(values, frozenset):
                    raise Fallback
                return (len(values),)
            return count
        raise Untranslatable(f"{name}()")

    def _opaque(self, token):
        """An expression over variables only that elementpath evaluates itself, given their values (a few tokens
        instead of the whole chain of variables): e.g. xs:dateTime($low) le xs:dateTime($high)."""
        names = {(t[0].value if len(t) else t.value) for t in token.iter("$")}
        if any(n not in self.variables and n not in self.constants for n in names):
            raise Untranslatable("a variable not compiled")
        functions = {n: self._variable(t) for t in token.iter("$") for n in [t[0].value if len(t) else t.value]}

        def opaque(env: Env):
            variables = {}
            for name, function in functions.items():
                values = function(env)
                if isinstance(values, frozenset):
                    values = sorted(values)
                elif any(isinstance(v, etree._Element) for v in values):
                    raise Fallback
                items = [UntypedAtomic(str(v)) if type(v) is Node else v for v in values]
                variables[name] = items[0] if len(items) == 1 else items
            result = token.evaluate(XPathContext(_CAST_ROOT, variables=variables, timezone=implicit_timezone()))
            if isinstance(result, list):
                if any(not isinstance(v, (str, int, bool)) for v in result):
                    raise Fallback
                return tuple(result)
            return () if result is None else (result,)
        return opaque

    @staticmethod
    def _substring(arguments):
        text, start, length = arguments[0], arguments[1], arguments[2] if len(arguments) == 3 else None

        def substring(env):  # elementpath's, for integer arguments
            item, begin = _one_string(text(env)), _one_integer(start(env)) - 1
            if length is None:
                return (item[max(begin, 0):],)
            size = _one_integer(length(env))
            if size <= 0:
                return ("",)
            return (item[max(begin, 0):max(begin + size, 0)],)
        return substring

    @staticmethod
    def _replace(text, pattern: str, replacement: str):
        compiled = _regex(pattern)
        if re.search(r"(?<!\\)\$(?!\d)|\\(?![\\$])", replacement):
            raise Untranslatable("an invalid replacement")  # an error in XPath 2.0
        for group in range(compiled.groups, -1, -1):  # as elementpath rewrites $n
            if f"${group}" in replacement:
                replacement = re.sub(r"(?<!\\)\$%d" % group, r"\\g<%d>" % group, replacement)
        return lambda env: (compiled.sub(replacement, _one_string(text(env))).replace("\\$", "$"),)

    def _castable(self, token):
        if len(token) != 2 or token[1].symbol != ":" or token[1].value not in ("xs:integer", "xs:dateTime"):
            raise Untranslatable("castable as another type")
        value, type_name = self.compile(token[0]), token[1].value

        def castable(env):
            items = value(env)
            if not items:
                return (False,)
            if len(items) > 1 or not isinstance(items[0], str):
                raise Fallback
            return (_castable(str(items[0]), type_name),)
        return castable

    def _predicate(self, token):
        sequence, condition = self.compile(token[0]), self.compile(token[1])

        def predicate(env):
            values = sequence(env)
            if isinstance(values, frozenset):
                raise Fallback
            kept, item = [], env.item
            try:
                for value in values:
                    env.item = value
                    result = condition(env)
                    if result and type(result[0]) is int and len(result) == 1:
                        raise Fallback  # positional
                    if effective_boolean_value(result):
                        kept.append(value)
            finally:
                env.item = item
            return tuple(kept)
        return predicate

    def _general_comparison(self, token):
        left, right, equal = self.compile(token[0]), self.compile(token[1]), token.symbol == "="
        operator = getattr(operator_module, {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[token.symbol])

        def compare(env):
            a, b = left(env), right(env)
            if isinstance(b, frozenset) and equal:
                a, b = b, a
            if isinstance(a, frozenset):
                if not equal or isinstance(b, frozenset) or not all(isinstance(v, str) for v in b):
                    raise Fallback
                return (any(str(v) in a for v in b),)
            for x in a:
                x = _comparable(x)
                for y in b:
                    y = _comparable(y)
                    if type(x) is not type(y):
                        raise Fallback
                    if operator(x, y):
                        return (True,)
            return (False,)
        return compare

    def _value_comparison(self, token):
        left, right = self.compile(token[0]), self.compile(token[1])
        operator = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__"}[token.symbol]

        def compare(env):
            a, b = left(env), right(env)
            if not a or not b:
                return ()
            if isinstance(a, frozenset) or isinstance(b, frozenset) or len(a) > 1 or len(b) > 1:
                raise Fallback
            x, y = _comparable(a[0]), _comparable(b[0])
            if type(x) is not type(y):
                raise Fallback
            return (getattr(x, operator)(y),)
        return compare


_FUNCTIONS = ("empty", "exists", "not", "starts-with", "ends-with", "contains", "string-length", "normalize-space",
              "concat", "substring", "string-join", "replace", "tokenize", "distinct-values", "count", "matches")


_OPAQUE = {"$", ":", "(string)", "(integer)", "le", "lt", "ge", "gt", "eq", "ne", "=", "!=", "<", "<=", ">", ">=",
           "and", "or", "not", "empty", "exists", "(", ",", "if", "castable", "dateTime", "date"}


def _constructed(token) -> bool:
    """A constructor call (xs:dateTime(…)), or a comparison of one: what is left to elementpath (`_opaque`)."""
    if token.symbol == ":" and len(token) == 2 and token[1].symbol in ("dateTime", "date"):
        return True
    return token.symbol in ("le", "lt", "ge", "gt", "eq", "ne") and any(_constructed(t) for t in token)


def _context_free(token, parent: str = "") -> bool:
    """Whether an expression reads nothing but variables and literals (never the context: no path, no step)."""
    if token.symbol == "(name)":
        return parent in ("$", ":")
    if token.symbol not in _OPAQUE or (token.symbol in ("dateTime", "date") and not len(token)):
        return False
    return all(_context_free(t, token.symbol) for t in token)


def implicit_timezone() -> str:
    """Saxon's implicit timezone: the machine's, now."""
    offset = int(datetime.datetime.now().astimezone().utcoffset().total_seconds() // 60)
    return f"{'-' if offset < 0 else '+'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


def _is_path(token) -> bool:
    while token.symbol == "[":
        token = token[0]
    return token.symbol in ("/", "//", "(name)", ":", "*")


_COMPILERS = {
    "(string)": Compiler._string, "(integer)": Compiler._integer, "@": Compiler._attribute, "$": Compiler._variable,
    ".": Compiler._context_item, "(": Compiler._parenthesis, ",": Compiler._comma, "if": Compiler._if,
    "and": Compiler._and, "or": Compiler._or, "castable": Compiler._castable, "[": Compiler._predicate,
    **{s: Compiler._general_comparison for s in ("=", "!=", "<", "<=", ">", ">=")},
    **{s: Compiler._value_comparison for s in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{s: Compiler._function for s in _FUNCTIONS},
}
