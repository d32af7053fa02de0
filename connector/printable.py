"""Text from the store (or any outside source) made safe for a terminal or a log line: control characters,
including the ESC that starts a terminal escape sequence, and the bidirectional overrides that reorder what is
shown, are written as `\\xNN` / `\\uNNNN`; a long value is cut. One helper, used by every human output."""

from __future__ import annotations

import re

# C0 (tab and newline too: one record is one line), DEL, C1, line/paragraph separators, bidi embeddings and
# isolates, non-characters and lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffe\uffff\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value, limit: int | None = None) -> str:
    """`value` as text with unsafe characters escaped, cut to `limit` characters (with `…`) if given."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """`printable` line by line: a report's own line breaks stay."""
    return "\n".join(printable(line) for line in text.split("\n"))


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None
