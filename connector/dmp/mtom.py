"""MTOM/XOP (multipart/related) encoding and decoding of SOAP 1.2 messages.

Only the contents of xdsb:Document elements travel as binary attachments; everything else (the VIHF,
signatures, metadata) stays inline in the root XML part. Parts are joined as bytes, never base64.
"""

from __future__ import annotations

import base64
import binascii
import copy
import uuid
from email.message import Message
from urllib.parse import quote, unquote

from lxml import etree

from connector.dmp import soap

XOP_INCLUDE = f"{{{soap.XOP}}}Include"
XDSB_DOCUMENT = f"{{{soap.XDSB}}}Document"
ROOT_CONTENT_TYPE = 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'
CRLF = b"\r\n"
# RFC 2392: a cid URL is the URL-encoded addr-spec of the Content-ID.
_CID_SAFE = "@.-_~!$&'*+=^`{|}"


class MtomError(ValueError):
    """The message is not a well-formed MTOM/XOP multipart/related message."""


def cid_url(content_id: str) -> str:
    return "cid:" + quote(content_id, safe=_CID_SAFE)


class Body:
    """A multipart body as the list of its pieces: sent one after the other under its Content-Length (requests
    takes an object with a length and an iterator as a stream), so the documents, megabytes each, are not copied
    into one more buffer per attempt. `bytes(body)` joins them."""

    def __init__(self, chunks: list[bytes]):
        self._chunks = tuple(chunks)
        self._length = sum(len(c) for c in self._chunks)

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return iter(self._chunks)

    def __bytes__(self) -> bytes:
        return b"".join(self._chunks)


def encode(envelope: etree._Element, attachments: dict[str, bytes], *, action: str) -> tuple[str, bytes]:
    """(Content-Type header value, body) of `envelope` as MTOM; the xdsb:Document elements whose id
    is in `attachments` get an xop:Include and their bytes travel as application/octet-stream parts.
    The caller's envelope is not modified."""
    content_type, body = encode_body(envelope, attachments, action=action)
    return content_type, bytes(body)


def encode_body(envelope: etree._Element, attachments: dict[str, bytes], *, action: str) -> tuple[str, Body]:
    """`encode`, the body as a `Body` (its pieces, not joined)."""
    envelope = copy.deepcopy(envelope)
    token = uuid.uuid4().hex
    root_cid = f"root.{token}@dmp-connector"
    parts: list[tuple[str, bytes]] = []
    for n, doc in enumerate(envelope.iter(XDSB_DOCUMENT), start=1):
        doc_id = doc.get("id")
        if doc_id not in attachments:
            continue
        if len(doc) or (doc.text or "").strip():
            raise MtomError(f"xdsb:Document {doc_id} is not empty: its content must come from the attachments")
        cid = f"{n}.{token}@dmp-connector"
        etree.SubElement(doc, XOP_INCLUDE, nsmap={"xop": soap.XOP}).set("href", cid_url(cid))
        parts.append((cid, attachments[doc_id]))
    missing = set(attachments) - {doc.get("id") for doc in envelope.iter(XDSB_DOCUMENT)}
    if missing:
        raise MtomError(f"attachments without an xdsb:Document element: {', '.join(sorted(missing))}")

    boundary = f"MIMEBoundary_{token}"
    delimiter = b"--" + boundary.encode("ascii")
    chunks = [
        delimiter, CRLF,
        b"Content-Type: ", ROOT_CONTENT_TYPE.encode(), CRLF,
        b"Content-Transfer-Encoding: binary", CRLF,
        b"Content-ID: <", root_cid.encode(), b">", CRLF, CRLF,
        soap.to_bytes(envelope), CRLF,
    ]  # fmt: skip
    for cid, data in parts:
        if delimiter in data:  # practically impossible with a random token, but cheap to rule out
            raise MtomError("an attachment contains the MIME boundary")
        chunks += [
            delimiter, CRLF,
            b"Content-Type: application/octet-stream", CRLF,
            b"Content-Transfer-Encoding: binary", CRLF,
            b"Content-ID: <", cid.encode(), b">", CRLF, CRLF,
            data, CRLF,
        ]  # fmt: skip
    chunks += [delimiter, b"--", CRLF]
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; start="<{root_cid}>"; '
        f'start-info="application/soap+xml"; action="{action}"'
    )
    return content_type, Body(chunks)


def _content_type(value: str) -> Message:
    msg = Message()
    msg["Content-Type"] = value
    return msg


def is_multipart(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "multipart/related"


def split_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The (headers with lower-case names, content) of each part of a multipart body."""
    ct = _content_type(content_type)
    if ct.get_content_type() != "multipart/related":
        raise MtomError(f"expected a multipart/related message, got {ct.get_content_type()!r}")
    boundary = ct.get_param("boundary")
    if not boundary or not isinstance(boundary, str):
        raise MtomError("multipart/related Content-Type without a boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    # Tolerate bare LF line ends from sloppy peers, but only if no CRLF delimiter is present.
    eol = CRLF if body.startswith(delimiter + CRLF) or CRLF + delimiter in body else b"\n"
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        start = body.find(eol + delimiter)
        if start < 0:
            raise MtomError("multipart body does not contain its boundary")
        pos = start + len(eol) + len(delimiter)
    parts = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # close delimiter
        line_end = body.find(eol, pos)  # skip transport padding after the delimiter
        if line_end < 0:
            raise MtomError("multipart body ends inside a delimiter line")
        pos = line_end + len(eol)
        nxt = body.find(eol + delimiter, pos)
        if nxt < 0:
            raise MtomError("multipart body is truncated: no closing boundary")
        parts.append(_split_headers(body[pos:nxt], eol))
        pos = nxt + len(eol) + len(delimiter)


def _split_headers(part: bytes, eol: bytes) -> tuple[dict[str, str], bytes]:
    blank = part.find(eol + eol)
    if part.startswith(eol):
        head, content = b"", part[len(eol):]
    elif blank < 0:
        raise MtomError("multipart part without a blank line after its headers")
    else:
        head, content = part[:blank], part[blank + 2 * len(eol):]
    headers: dict[str, str] = {}
    last = None
    for raw in head.decode("latin-1").split(eol.decode()):
        if raw[:1] in (" ", "\t") and last:  # folded header line
            headers[last] += " " + raw.strip()
        elif ":" in raw:
            name, value = raw.split(":", 1)
            last = name.strip().lower()
            headers[last] = value.strip()
    return headers, content


def _strip_cid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value


def decode(content_type: str, body: bytes) -> tuple[etree._Element, dict[str, bytes]]:
    """(root XML element, {content-id: bytes} of the other parts) of an MTOM message. The root part
    is the one named by the `start` parameter, else the first; it is parsed without entities or
    network access. xop:Include elements are left in place: see resolve_documents."""
    parts = split_parts(content_type, body)
    if not parts:
        raise MtomError("multipart body has no parts")
    start = _content_type(content_type).get_param("start")
    root_index = 0
    if isinstance(start, str) and start:
        wanted = _strip_cid(start)
        ids = [_strip_cid(h.get("content-id", "")) for h, _ in parts]
        if wanted not in ids:
            raise MtomError("the start parameter names no part of the message")
        root_index = ids.index(wanted)
    try:
        root = soap.parse_xml(parts[root_index][1])
    except soap.SoapError as exc:
        raise MtomError(f"root part: {exc}") from None
    attachments = {}
    for i, (headers, content) in enumerate(parts):
        if i != root_index:
            if headers.get("content-transfer-encoding", "binary").lower() == "base64":
                content = _b64(content, "attachment")
            attachments[_strip_cid(headers.get("content-id", f"part{i}"))] = content
    return root, attachments


def _b64(data: bytes | str, what: str) -> bytes:
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MtomError(f"{what} is not valid base64") from None


def resolve_documents(envelope: etree._Element, parts: dict[str, bytes]) -> dict[str, bytes]:
    """{xdsb:Document id: bytes}, from its xop:Include (cid URL into `parts`) or inline base64."""
    documents = {}
    for doc in envelope.iter(XDSB_DOCUMENT):
        doc_id = doc.get("id") or ""
        include = doc.find(XOP_INCLUDE)
        if include is not None:
            href = include.get("href") or ""
            if not href.lower().startswith("cid:"):
                raise MtomError(f"xdsb:Document {doc_id}: xop:Include href is not a cid: URL")
            cid = unquote(href[4:])
            if cid not in parts:
                raise MtomError(f"xdsb:Document {doc_id}: no MIME part with Content-ID <{cid}>")
            documents[doc_id] = parts[cid]
        else:
            documents[doc_id] = _b64(doc.text or "", f"xdsb:Document {doc_id}")
    return documents
