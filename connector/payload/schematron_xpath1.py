"""The XPath 2.0 of the ANS schematron translated to XPath 1.0 where both give the same answer, for libxml2.

`schematron_python` runs the reduced stylesheet's rules as one XSLT 1.0 transform (libxslt, in C) and leaves to
`elementpath` only what this module cannot translate. A test or `let` variable is translated when every construct
in it is one whose XPath 1.0 meaning equals its XPath 2.0 meaning on any document, and cannot raise an error in
either: node-set paths and predicates, `and`/`or`/`not`, `count`, `=`/`!=` between nodes and strings (both compare
strings; never against a number, which XPath 2.0 would cast, and could fail to), `<`/`>` between numbers only (XPath
2.0 compares two strings as strings, 1.0 as numbers), string functions on one attribute or string at most (XPath 2.0
raises where 1.0 takes the first of several nodes), `empty`/`exists` of nodes, `every $x in P satisfies $x[Q]`,
`@* except (@a|@b[Q])`, and `matches`, `ends-with`, `string-join` or membership of a value set as extension
functions computed in Python as `elementpath` computes them. Anything else raises `Untranslatable`.
"""

from __future__ import annotations

import re

from elementpath.regex import translate_pattern

EXTENSIONS = "urn:dmp-connector:xpath1"
NODE1, NODES, STRING, NUMBER, BOOLEAN = "node1", "nodes", "string", "number", "boolean"
_NODE = (NODE1, NODES)
_TEXT = (NODE1, STRING)  # at most one item, whose string value XPath 2.0 functions accept
_AXES = {"self", "child", "descendant", "descendant-or-self", "parent", "ancestor", "ancestor-or-self",
         "following-sibling", "preceding-sibling", "following", "preceding", "attribute"}
_SINGLE_AXES = {"self", "parent", "attribute"}
_STRING_FUNCTIONS = {  # name -> kinds of its arguments (None: any number of _TEXT)
    "string": (_TEXT,), "string-length": (_TEXT,), "normalize-space": (_TEXT,),
    "contains": (_TEXT, _TEXT), "starts-with": (_TEXT, _TEXT), "substring-before": (_TEXT, _TEXT),
    "substring-after": (_TEXT, _TEXT), "translate": (_TEXT, _TEXT, _TEXT), "concat": None,
}
_OPERATORS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=", "ne": "!="}
_RETURNS = {"string-length": NUMBER, "contains": BOOLEAN, "starts-with": BOOLEAN}


# what a quantified condition may hold to be evaluated with its variable as the context node
_CONTEXT_FREE = {"$", "(name)", "(string)", "(integer)", "=", "!=", "and", "or", "not", "(", ","}


class Untranslatable(Exception):
    pass


class Translator:
    """Translates one expression at a time; `variables` maps a variable's XPath 2.0 name to its XSLT 1.0 name,
    kind and, for a string literal, its value (a rule's variables as they are declared, in order)."""

    def __init__(self, namespaces: dict[str, str], constants: dict[str, frozenset]):
        self.namespaces = namespaces
        self.constants = {name: name for name in constants}  # a value set's variable (or an alias) -> its name
        self.variables: dict[str, tuple[str, str, str | None]] = {}

    def _string(self, value: str) -> str:
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value:
            return f'"{value}"'
        raise Untranslatable("a string with both quotes")

    def _test(self, token) -> tuple[str, bool]:
        """A node test: (text, names one node)."""
        if token.symbol == "*" and not len(token):
            return "*", False
        if token.symbol == "(name)":
            return token.value, True
        if token.symbol == ":" and len(token) == 2 and token[0].symbol == "*" and token[1].symbol == "(name)":
            return f"*[local-name() = '{token[1].value}']", False  # any namespace: only as an attribute test below
        if token.symbol == ":":
            if len(token) != 2 or token[0].symbol != "(name)" or token[1].symbol not in ("(name)", "*"):
                raise Untranslatable("a prefixed name of another form")
            if token[0].value not in self.namespaces:
                raise Untranslatable(f"prefix {token[0].value}")
            return f"{token[0].value}:{token[1].value}", token[1].symbol == "(name)"
        if token.symbol in ("text", "node") and not len(token):
            return token.symbol + "()", False
        raise Untranslatable(f"node test {token.symbol}")

    def _axis(self, token):
        test, named = self._test(token[0])
        return f"{token.symbol}::{test}", NODE1 if named and token.symbol in _SINGLE_AXES else NODES

    def translate_step(self, token) -> tuple[str, str]:
        """A step of a path (what XPath 1.0 allows right of '/')."""
        if token.symbol in ("(name)", ":", "*", "@", ".", "..", "text", "node") or token.symbol in _AXES:
            return self.translate(token)
        base = token
        while base.symbol == "[":
            base = base[0]
        if base is not token and base.symbol in ("(name)", ":", "*", "@", "text", "node", *_AXES):
            return self.translate(token)
        raise Untranslatable(f"step {token.symbol}")

    def translate(self, token) -> tuple[str, str]:
        """(XPath 1.0 text, kind) of an elementpath token."""
        symbol = token.symbol
        if symbol == "(string)":
            return self._string(token.value), STRING
        if symbol == "(integer)":
            return str(token.value), NUMBER
        if symbol in ("(name)", ":") or (symbol in ("text", "node") and not len(token)):
            return self._test(token)[0], NODES
        if symbol in _AXES:
            return self._axis(token)
        if symbol == "*" and not len(token):
            return "*", NODES
        if symbol == "@":
            test, named = self._test(token[0])
            return f"@{test}", NODE1 if named else NODES  # @*:name is @*[local-name() = 'name']: several
        if symbol == ".":
            return ".", NODE1
        if symbol == "..":
            return "..", NODE1
        if symbol in ("/", "//"):
            return self._path(token)
        if symbol == "[":
            return self._predicate(token)
        if symbol == "(":
            if len(token) != 1:
                raise Untranslatable("()")
            text, kind = self.translate(token[0])
            return f"({text})", kind
        if symbol in ("|", "union"):
            (left, lk), (right, rk) = self.translate(token[0]), self.translate(token[1])
            if lk not in _NODE or rk not in _NODE:
                raise Untranslatable("a union of non-nodes")
            return f"({left} | {right})", NODES
        if symbol in ("and", "or"):
            left, right = self.translate(token[0])[0], self.translate(token[1])[0]
            return f"({left} {symbol} {right})", BOOLEAN
        if symbol in ("=", "!="):
            return self._general_comparison(token)
        if symbol in ("<", "<=", ">", ">=", "lt", "le", "gt", "ge"):  # numbers only: 2.0 compares strings as strings
            (left, lk), (right, rk) = self.translate(token[0]), self.translate(token[1])
            if lk != NUMBER or rk != NUMBER:
                raise Untranslatable("an order comparison of non-numbers")
            return f"({left} {_OPERATORS.get(symbol, symbol)} {right})", BOOLEAN
        if symbol in ("eq", "ne"):  # one item or none each: as = and != (both false when one is absent)
            (left, lk), (right, rk) = self.translate(token[0]), self.translate(token[1])
            if not ((lk in _TEXT and rk in _TEXT) or lk == rk == NUMBER):
                raise Untranslatable(f"{lk} {symbol} {rk}")
            return f"({left} {_OPERATORS[symbol]} {right})", BOOLEAN
        if symbol == "$":
            return self._variable(token)
        if symbol == "every" or symbol == "some":
            return self._quantified(token)
        if symbol == "except":
            return self._attributes_except(token)
        return self._function(token)

    def _path(self, token):
        if len(token) == 1:
            step, _ = self.translate_step(token[0])
            return f"{token.symbol}{step}", NODES
        left, lk = self.translate(token[0])
        right, rk = self.translate_step(token[1])
        if lk not in _NODE:
            raise Untranslatable("a path from non-nodes")
        kind = NODE1 if token.symbol == "/" and lk == NODE1 and rk == NODE1 else NODES
        return f"{left}{token.symbol}{right}", kind

    def _predicate(self, token):
        left, kind = self.translate(token[0])
        if kind not in _NODE:
            raise Untranslatable("a predicate on non-nodes")
        predicate, _ = self.translate(token[1])
        return f"{left}[{predicate}]", kind

    def _general_comparison(self, token):
        for side in (0, 1):  # x = ('a', 'b'): x = 'a' or x = 'b' (existential on both sides in both versions)
            literals = _string_literals(token[side])
            if literals is not None:
                other, kind = self.translate(token[1 - side])
                if kind not in (NODE1, NODES, STRING):
                    raise Untranslatable(f"{kind} {token.symbol} strings")
                return "(" + " or ".join(f"{other} {token.symbol} {self._string(v)}" for v in literals) + ")", BOOLEAN
        (left, lk), (right, rk) = (self.translate(t) if t.symbol != "$" or t[0].value not in self.constants
                                   else (self.constants[t[0].value], "constant") for t in token)
        if "constant" in (lk, rk):
            value, vk = (left, lk) if rk == "constant" else (right, rk)
            constant = right if rk == "constant" else left
            if token.symbol != "=" or vk not in (NODE1, NODES, STRING):
                raise Untranslatable("a value set compared otherwise than by =")
            return f"dmp:in({value}, '{constant}')", BOOLEAN
        comparable = {frozenset((NODE1, STRING)), frozenset((NODES, STRING)), frozenset((NODE1, NODES)),
                      frozenset((NODE1,)), frozenset((NODES,)), frozenset((STRING,)), frozenset((NUMBER,)),
                      frozenset((BOOLEAN,))}
        if frozenset((lk, rk)) not in comparable:
            raise Untranslatable(f"{lk} {token.symbol} {rk}")
        return f"({left} {token.symbol} {right})", BOOLEAN

    def _variable(self, token):
        name = token[0].value if len(token) else token.value
        if name not in self.variables:
            raise Untranslatable(f"${name}")
        text, kind, _ = self.variables[name]
        return text, kind

    def _literal_string(self, token) -> str:
        """A string known when the stylesheet is compiled: a literal, or a variable bound to one."""
        if token.symbol == "(string)":
            return token.value
        if token.symbol == "$":
            name = token[0].value if len(token) else token.value
            literal = self.variables.get(name, (None, None, None))[2]
            if literal is not None:
                return literal
        raise Untranslatable("a pattern that is not a literal")

    def _quantified(self, token):
        """`every $x in P satisfies $x[Q]` is `not(P[not(Q)])`, `some …` is `boolean(P[Q])`, when Q is not a
        number (a position) and does not read $x; so is `every $x in P satisfies C` when C reads nothing but $x,
        other variables and literals (no path: $x is then `.`)."""
        if len(token) != 3:
            raise Untranslatable("several bindings")
        variable, domain, condition = token[0], token[1], token[2]
        name = variable[0].value if len(variable) else variable.value
        if condition.symbol != "[" or condition[0].symbol != "$" or (condition[0][0].value if len(condition[0]) else condition[0].value) != name:
            if any(t.symbol not in _CONTEXT_FREE for t in condition.iter()):
                raise Untranslatable("a quantified condition other than $x[…]")
            domain_text, kind = self.translate(domain)
            if kind not in _NODE:
                raise Untranslatable("a quantified domain of non-nodes")
            saved = self.variables.get(name)
            self.variables[name] = (".", NODE1, None)
            try:
                test, test_kind = self.translate(condition)
            finally:
                self.variables.pop(name)
                if saved is not None:
                    self.variables[name] = saved
            if test_kind == NUMBER:
                raise Untranslatable("a positional condition")
            if token.symbol == "every":
                return f"not(({domain_text})[not({test})])", BOOLEAN
            return f"boolean(({domain_text})[{test}])", BOOLEAN
        if any(t.symbol == "$" and (t[0].value if len(t) else t.value) == name for t in condition[1].iter()):
            raise Untranslatable("$x read in the condition")
        domain_text, kind = self.translate(domain)
        if kind not in _NODE:
            raise Untranslatable("a quantified domain of non-nodes")
        test, test_kind = self.translate(condition[1])
        if test_kind == NUMBER:
            raise Untranslatable("a positional condition")
        domain_text = f"({domain_text})" if not domain_text.startswith("(") else domain_text
        if token.symbol == "every":
            return f"not({domain_text}[not({test})])", BOOLEAN
        return f"boolean({domain_text}[{test}])", BOOLEAN

    def _attributes_except(self, token):
        """`@* except (@a | @b[Q] …)`: the attributes not named there (or named, but failing Q)."""
        left, right = token
        if left.symbol != "@" or left[0].symbol != "*":
            raise Untranslatable("except of other than @*")
        right = right[0] if right.symbol == "(" and len(right) == 1 else right
        alternatives = []

        def collect(t):
            if t.symbol in ("|", "union"):
                collect(t[0])
                collect(t[1])
            else:
                alternatives.append(t)

        collect(right)
        conditions = []
        for alternative in alternatives:
            predicates = []
            while alternative.symbol == "[":
                predicate, kind = self.translate(alternative[1])
                if kind == NUMBER:
                    raise Untranslatable("a positional predicate")
                predicates.insert(0, predicate)
                alternative = alternative[0]
            if alternative.symbol != "@" or alternative[0].symbol not in ("(name)", ":") or (
                    alternative[0].symbol == ":" and alternative[0][1].symbol != "(name)"):
                raise Untranslatable("except of other than named attributes")
            name = alternative[0]
            if name.symbol == ":" and name[0].symbol == "*":
                test = f"local-name() = '{name[1].value}'"
            else:
                if name.symbol == ":":
                    uri, local = self.namespaces[name[0].value], name[1].value
                else:
                    uri, local = "", name.value
                test = f"namespace-uri() = '{uri}' and local-name() = '{local}'"
            conditions.append("(" + " and ".join([test] + [f"({p})" for p in predicates]) + ")")
        return f"@*[not({' or '.join(conditions)})]", NODES

    def _function(self, token):
        symbol, arguments = token.symbol, list(token)
        if symbol in ("true", "false", "position", "last") and not arguments:
            return f"{symbol}()", NUMBER if symbol in ("position", "last") else BOOLEAN
        if symbol in ("not", "boolean") and len(arguments) == 1:
            return f"{symbol}({self.translate(arguments[0])[0]})", BOOLEAN
        if symbol in ("empty", "exists", "count") and len(arguments) == 1:
            text, kind = self.translate(arguments[0])
            if kind not in _NODE:
                raise Untranslatable(f"{symbol} of non-nodes")
            return {"empty": f"not({text})", "exists": f"boolean({text})", "count": f"count({text})"}[symbol], \
                BOOLEAN if symbol != "count" else NUMBER
        if symbol in ("local-name", "namespace-uri") and len(arguments) <= 1:
            if arguments and self.translate(arguments[0])[1] != NODE1:
                raise Untranslatable(f"{symbol} of several nodes")
            inner = self.translate(arguments[0])[0] if arguments else ""
            return f"{symbol}({inner})", STRING
        if symbol in _STRING_FUNCTIONS:
            kinds = _STRING_FUNCTIONS[symbol]
            if kinds is None:
                kinds = (_TEXT,) * max(len(arguments), 2)
            if symbol == "substring":
                kinds = (_TEXT, (NUMBER,), (NUMBER,))[:len(arguments)]
            if symbol in ("string", "string-length", "normalize-space") and not arguments:
                return f"{symbol}()", _RETURNS.get(symbol, STRING)
            if len(arguments) != len(kinds):
                raise Untranslatable(f"{symbol} with {len(arguments)} arguments")
            texts = []
            for argument, allowed in zip(arguments, kinds):
                text, kind = self.translate(argument)
                if kind not in allowed:
                    raise Untranslatable(f"{symbol} of {kind}")
                texts.append(text)
            return f"{symbol}({', '.join(texts)})", _RETURNS.get(symbol, STRING)
        if symbol == "substring" and len(arguments) in (2, 3):
            text, kind = self.translate(arguments[0])
            numbers = [self.translate(a) for a in arguments[1:]]
            if kind not in _TEXT or any(k != NUMBER for _, k in numbers):
                raise Untranslatable("substring of other kinds")
            return f"substring({', '.join([text] + [t for t, _ in numbers])})", STRING
        if symbol == "matches" and len(arguments) in (2, 3):
            text, kind = self.translate(arguments[0])
            if kind not in _TEXT:
                raise Untranslatable("matches of several nodes")
            pattern = self._literal_string(arguments[1])
            flags = self._literal_string(arguments[2]) if len(arguments) == 3 else ""
            compiled_regex(pattern, flags)  # raises Untranslatable if XPath 2.0 would raise
            return f"dmp:matches(string({text}), {self._string(pattern)}, {self._string(flags)})", BOOLEAN
        if symbol == "ends-with" and len(arguments) == 2:
            texts = [self.translate(a) for a in arguments]
            if any(k not in _TEXT for _, k in texts):
                raise Untranslatable("ends-with of several nodes")
            return f"dmp:ends-with(string({texts[0][0]}), string({texts[1][0]}))", BOOLEAN
        if symbol == "string-join" and len(arguments) == 2:
            items, kind = self.translate(arguments[0])
            separator, sk = self.translate(arguments[1])
            if kind not in _NODE or sk != STRING:
                raise Untranslatable("string-join of non-nodes")
            return f"dmp:string-join({items}, {separator})", STRING
        raise Untranslatable(f"{symbol}()")


def _string_literals(token) -> list[str] | None:
    """The strings of a parenthesised sequence of two or more string literals, e.g. ('OTH', 'NA')."""
    if token.symbol != "(" or len(token) != 1 or token[0].symbol != ",":
        return None
    items, token = [], token[0]
    while token.symbol == ",":
        items.insert(0, token[1])
        token = token[0]
    items.insert(0, token)
    return [t.value for t in items] if all(t.symbol == "(string)" for t in items) else None


_REGEX_FLAGS = {"s": re.S, "m": re.M, "i": re.I, "x": re.X}
_regexes: dict[tuple[str, str], re.Pattern] = {}


def compiled_regex(pattern: str, flags: str) -> re.Pattern:
    """The Python regular expression elementpath's matches() uses for an XSD pattern and flags (XSD 1.1)."""
    key = (pattern, flags)
    if key not in _regexes:
        if any(c not in _REGEX_FLAGS for c in flags):
            raise Untranslatable(f"regex flags {flags}")
        value = 0
        for c in flags:
            value |= _REGEX_FLAGS[c]
        try:
            _regexes[key] = re.compile(translate_pattern(pattern, value, "1.1"), value)
        except Exception as exc:  # an invalid pattern raises in XPath 2.0: left to elementpath
            raise Untranslatable(f"regex: {exc}") from None
    return _regexes[key]


def _string_value(item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, float):
        raise TypeError("a number where a string was expected")
    return "".join(item.itertext())  # an element


def extensions(constants: dict[str, frozenset]) -> dict:
    """The extension functions the translated XPath calls, for `etree.XSLT(…, extensions=…)`."""

    def matches(_, text, pattern, flags):
        return compiled_regex(pattern, flags).search(text) is not None

    def ends_with(_, text, suffix):
        return text.endswith(suffix)

    def string_join(_, items, separator):
        return separator.join(_string_value(i) for i in items)

    def in_constant(_, values, name):
        values = values if isinstance(values, list) else [values]
        found = constants[name]
        return any(_string_value(v) in found for v in values)

    return {(EXTENSIONS, "matches"): matches, (EXTENSIONS, "ends-with"): ends_with,
            (EXTENSIONS, "string-join"): string_join, (EXTENSIONS, "in"): in_constant}
