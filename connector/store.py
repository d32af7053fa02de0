"""The hospital's document store: what a DPI vendor exposes as tables or views (read), plus the
`dmp_feed_status` write-back table that lets the DPI show "versé au DMP" (EXI 05).

The contract is documented in the README. Rows are read through SQLAlchemy Core, streamed, and turned
into immutable `Patient` / `Document` values; a row with a wrong type becomes a `RowProblem` naming the
document and the column, so the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from connector.errors import StoreError
from connector.printable import has_unsafe, printable

metadata = sa.MetaData()

dmp_patient = sa.Table(
    "dmp_patient",
    metadata,
    sa.Column("patient_id", sa.String(64), primary_key=True),
    sa.Column("ins_matricule", sa.String(15)),
    sa.Column("ins_oid", sa.String(64)),
    sa.Column("identity_status", sa.String(8)),
    sa.Column("birth_family_name", sa.String(200)),
    sa.Column("birth_given_names", sa.String(400)),
    sa.Column("used_family_name", sa.String(200)),
    sa.Column("used_given_name", sa.String(200)),
    sa.Column("sex", sa.String(1)),
    sa.Column("birth_date", sa.Date),
    sa.Column("birth_place_code", sa.String(5)),
    sa.Column("opposed_to_feeding", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deceased_at", sa.Date),
)

dmp_document = sa.Table(
    "dmp_document",
    metadata,
    sa.Column("document_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("patient_id", sa.String(64), nullable=False, index=True),
    sa.Column("finess_geo", sa.String(9)),
    sa.Column("type_code", sa.String(32)),
    sa.Column("title", sa.String(500)),
    sa.Column("created_at", sa.DateTime),
    sa.Column("service_start", sa.DateTime),
    sa.Column("service_stop", sa.DateTime),
    sa.Column("author_rpps", sa.String(11)),
    sa.Column("author_family_name", sa.String(200)),
    sa.Column("author_given_name", sa.String(200)),
    sa.Column("author_specialty_code", sa.String(32)),
    sa.Column("legal_authenticator_rpps", sa.String(11)),
    sa.Column("status", sa.String(16)),
    sa.Column("mime_type", sa.String(64)),
    sa.Column("content_path", sa.String(1000)),
    sa.Column("content", sa.LargeBinary),
    sa.Column("mask_professionals", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("invisible_to_patient", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("invisible_to_legal_representatives", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.DateTime),
    # Optional (a store without it reads NULL): the encounter class I/O/R/N or a JDV_J59 code (payload/activity.py).
    sa.Column("activity", sa.String(64)),
    # Optional: when the announcement consultation took place (EXI 08): a document fed invisible to the patient
    # becomes visible then (else `rules.unmask_after_days` after it was fed).
    sa.Column("announced_at", sa.DateTime),
)
OPTIONAL_COLUMNS = frozenset({"activity", "announced_at"})  # dmp_document columns a store may lack

dmp_feed_status = sa.Table(
    "dmp_feed_status",
    metadata,
    sa.Column("document_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("dmp_unique_id", sa.String(64)),
    sa.Column("fed_at", sa.DateTime),
    sa.Column("last_error", sa.String(1000)),
)

# Built once: a statement built per row cost more than its execution.
_WRITE_BACK_UPDATE = sa.update(dmp_feed_status).where(
    dmp_feed_status.c.document_id == sa.bindparam("key_id"), dmp_feed_status.c.version == sa.bindparam("key_version"))
_WRITE_BACK_INSERT = sa.insert(dmp_feed_status)


def read_capped(f, size: int, limit: int) -> bytes:
    """At most `limit` + 1 bytes of an open file whose fstat said `size` (more means over the limit). One
    read(limit + 1) would allocate limit + 1 bytes (20 MB) for every file, then shrink them."""
    data = f.read(min(size, limit) + 1)
    if len(data) > size:  # grown since fstat: on up to limit + 1
        data += f.read(limit + 1 - len(data))
    return data


@dataclass(frozen=True)
class Patient:
    patient_id: str
    ins_matricule: str | None
    ins_oid: str | None
    identity_status: str | None
    birth_family_name: str | None
    birth_given_names: str | None
    used_family_name: str | None
    used_given_name: str | None
    sex: str | None
    birth_date: dt.date | None
    birth_place_code: str | None
    opposed_to_feeding: bool
    deceased_at: dt.date | None

    @property
    def given_names(self) -> list[str]:
        return (self.birth_given_names or "").split()


@dataclass(frozen=True)
class Document:
    document_id: str
    version: int
    patient_id: str
    finess_geo: str | None
    type_code: str | None
    title: str | None
    created_at: dt.datetime | None
    service_start: dt.datetime | None
    service_stop: dt.datetime | None
    author_rpps: str | None
    author_family_name: str | None
    author_given_name: str | None
    author_specialty_code: str | None
    legal_authenticator_rpps: str | None
    status: str | None
    mime_type: str | None
    content_path: str | None
    content: bytes | None
    mask_professionals: bool
    invisible_to_patient: bool
    invisible_to_legal_representatives: bool
    updated_at: dt.datetime | None
    activity: str | None = None  # the encounter class or JDV_J59 code behind the document (optional column)
    announced_at: dt.datetime | None = None  # the announcement consultation (optional column, EXI 08)

    @property
    def key(self) -> tuple[str, int]:
        return (self.document_id, self.version)


@dataclass(frozen=True)
class Candidate:
    """One store document with its patient (None when the patient row is missing)."""

    document: Document
    patient: Patient | None


@dataclass(frozen=True)
class RowProblem:
    """A store row that could not be read (wrong type, missing key column)."""

    document_id: str
    version: int | None
    patient_id: str | None
    message: str


ROW_INVALID, CONTENT_INVALID = "ROW_INVALID", "CONTENT_INVALID"


class ContentRefused(Exception):
    """A document's content that is not read at all: a path outside `content_root`, not a regular file, over the
    size limit (CONTENT_INVALID), or a `content` column of the wrong type (ROW_INVALID). `detail` names the
    column or the rule, never the path (it may hold a name) nor the content."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# The ledger's key columns (connector/ledger/schema.py): a longer value could not be recorded, and a store
# without primary key may repeat a key. Checked per row, before anything is written.
KEY_LIMITS = {"document_id": 64, "patient_id": 64, "finess_geo": 9, "type_code": 32}


_PATIENT_COLS = [c.name for c in dmp_patient.columns]
_DOCUMENT_COLS = [c.name for c in dmp_document.columns if c.name != "content"]
_CONTENT_SET = "content_set"  # whether `content` is set, read with the row (the bytes are read later)


class Store:
    """Reads candidates from the store database and writes back the fed marker."""

    def __init__(self, url: str, content_root: Path, write_back: bool = True):
        self.url = url
        self.content_root = content_root
        self.write_back_enabled = write_back
        self.engine = sa.create_engine(url, future=True)
        self._absent: frozenset[str] | None = None  # optional dmp_document columns the store lacks (read once)

    def check_schema(self) -> None:
        """Raise StoreError naming the missing table or column."""
        try:
            inspector = sa.inspect(self.engine)
            names = set(inspector.get_table_names()) | set(inspector.get_view_names())
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store database unreachable: {_short(exc)}") from None
        for table in (dmp_patient, dmp_document):
            if table.name not in names:
                raise StoreError(f"store: table or view {table.name} is missing")
            present = {c["name"] for c in inspector.get_columns(table.name)}
            if table is dmp_document:
                self._absent = OPTIONAL_COLUMNS - present
            missing = [c.name for c in table.columns if c.name not in present and c.name not in OPTIONAL_COLUMNS]
            if missing:
                raise StoreError(f"store: {table.name} lacks column(s) {', '.join(missing)}")

    def ensure_write_back_table(self) -> None:
        if not self.write_back_enabled:
            return
        try:
            dmp_feed_status.create(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # two instances starting on a new store: both checked, one created it first
            if not sa.inspect(self.engine).has_table(dmp_feed_status.name):
                raise

    def candidates(self, batch_size: int = 500) -> Iterator[Candidate | RowProblem]:
        """Every store document with its patient, in (patient_id, document_id, version) order, without their
        content (loaded later by `content`). Read in keyset-paginated batches, each in its own short read, so
        the scan never holds a long transaction on the hospital's database (nor blocks our write-back).

        A store without primary key (a DPI's view) may hold rows with an empty key or one key on several rows:
        those come first, as RowProblems (once per repeated key), and the paginated read skips them (a NULL in
        the keyset would end it early)."""
        d = dmp_document
        key = sa.tuple_(d.c.patient_id, d.c.document_id, d.c.version)
        yield from self._rows_without_key()
        repeated = self._repeated_keys()
        reported = set()
        last = None
        while True:
            query = (self._select().where(d.c.patient_id.is_not(None), d.c.document_id.is_not(None),
                                          d.c.version.is_not(None))
                     .order_by(d.c.patient_id, d.c.document_id, d.c.version).limit(batch_size))
            if last is not None:
                query = query.where(key > sa.tuple_(*last))
            rows = self._read(query)
            for row in rows:
                raw_key = (_as_trimmed(row["document_id"]), row["version"])
                if raw_key in repeated:
                    if raw_key not in reported:
                        reported.add(raw_key)
                        item = _candidate(row)
                        document_id, version = ((item.document.document_id, item.document.version)
                                                if isinstance(item, Candidate) else (item.document_id, item.version))
                        yield RowProblem(document_id, version, _key_or_none(row, "patient_id"),
                                         f"(document_id, version) is on {repeated[raw_key]} rows of dmp_document: "
                                         "the key must be unique")
                    continue
                yield _candidate(row)
            if len(rows) < batch_size:
                return
            last = (rows[-1]["patient_id"], rows[-1]["document_id"], rows[-1]["version"])

    def _rows_without_key(self) -> Iterator[RowProblem]:
        d = dmp_document
        rows = self._read(self._select().where(sa.or_(d.c.patient_id.is_(None), d.c.document_id.is_(None),
                                                      d.c.version.is_(None))))
        for row in rows:
            empty = [c for c in ("document_id", "version", "patient_id") if row[c] is None]
            yield RowProblem(_shown_id(row["document_id"]), None, _key_or_none(row, "patient_id"),
                             f"column dmp_document.{empty[0]}: empty (a key column)")

    def _repeated_keys(self) -> dict[tuple, int]:
        """(document_id, version) found on more than one row, with their count (none when the key is a key)."""
        d = dmp_document
        document_id = sa.func.trim(d.c.document_id)  # "A" and "A " are one key once read (see _key)
        query = (sa.select(document_id.label("document_id"), d.c.version, sa.func.count().label("n"))
                 .where(d.c.document_id.is_not(None), d.c.version.is_not(None))
                 .group_by(document_id, d.c.version).having(sa.func.count() > 1))
        return {(r.document_id, r.version): r.n for r in self._read(query, mappings=False)}

    def _read(self, query, mappings: bool = True) -> list:
        try:
            with self.engine.connect() as conn:
                result = conn.execute(query)
                return result.mappings().all() if mappings else result.all()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store query failed: {_short(exc)}") from None

    def _select(self):
        """Documents joined to their patients; dates and booleans come back raw and are checked by us, so a
        malformed value makes one RowProblem instead of breaking the whole read."""
        d, p = dmp_document, dmp_patient
        absent = self._absent_columns()

        def raw(column, label=None):
            if column.table is d and column.name in absent:
                return sa.null().label(column.name)
            value = sa.type_coerce(column, sa.String) if isinstance(column.type, (sa.Date, sa.DateTime, sa.Boolean)) else column
            return value.label(label or column.name)

        content_set = sa.case((d.c.content.is_(None), 0), else_=1).label(_CONTENT_SET)
        return sa.select(
            *[raw(d.c[n]) for n in _DOCUMENT_COLS], *[raw(p.c[n], f"p_{n}") for n in _PATIENT_COLS], content_set
        ).select_from(d.outerjoin(p, p.c.patient_id == d.c.patient_id))

    def _absent_columns(self) -> frozenset[str]:
        if self._absent is None:
            try:
                present = {c["name"] for c in sa.inspect(self.engine).get_columns(dmp_document.name)}
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(f"store database unreachable: {_short(exc)}") from None
            self._absent = OPTIONAL_COLUMNS - present
        return self._absent

    def get(self, document_id: str, version: int) -> Candidate | RowProblem | None:
        """One document with its patient (to resend a journaled submission)."""
        d = dmp_document
        query = self._select().where(d.c.document_id == document_id, d.c.version == version)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).mappings().first()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"store query failed: {_short(exc)}") from None
        return None if row is None else _candidate(row)

    def content_file(self, document: Document) -> Path:
        """The file of a document stored by path (relative paths are under `content_root`), as given."""
        path = Path(document.content_path)
        return path if path.is_absolute() else self.content_root / path

    def open_content(self, document: Document, limit: int | None = None) -> tuple[int, int]:
        """(descriptor, size) of a document stored by path, opened read-only; the caller closes it.

        The path is resolved (symlinks included) and must lie under `content_root`; the resolved file is opened
        without following a symlink put there meanwhile and without blocking (a FIFO), and must be a regular
        file of at most `limit` bytes. Raises ContentRefused for any of these, OSError if it cannot be opened."""
        root = os.path.realpath(self.content_root)
        real = os.path.realpath(self.content_file(document))
        if not _inside(real, root):
            raise ContentRefused(CONTENT_INVALID, "content_path is outside store.content_root")
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ContentRefused(CONTENT_INVALID, "content_path became a symbolic link while read") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ContentRefused(CONTENT_INVALID, "content_path is not a regular file")
            opened = _fd_path(fd)  # where the descriptor really points (a directory swapped meanwhile)
            if opened is not None and not _inside(opened, root):
                raise ContentRefused(CONTENT_INVALID, "content_path is outside store.content_root")
            if limit is not None and info.st_size > limit:
                raise ContentRefused(CONTENT_INVALID,
                                     f"content is {info.st_size} bytes, over rules.max_document_bytes {limit}")
            os.set_blocking(fd, True)
            return fd, info.st_size
        except BaseException:
            os.close(fd)
            raise

    def content(self, document: Document, limit: int | None = None) -> bytes:
        """The document's bytes, from `content` or `content_path`, never more than `limit` bytes read; raises
        ContentRefused (see `open_content`), OSError if unreadable."""
        if document.content_path:
            fd, size = self.open_content(document, limit)
            with os.fdopen(fd, "rb") as f:
                data = f.read() if limit is None else read_capped(f, size, limit)
            if limit is not None and len(data) > limit:  # grew since fstat
                raise ContentRefused(CONTENT_INVALID, f"content is over rules.max_document_bytes {limit}")
            return data
        d = dmp_document
        key = (d.c.document_id == document.document_id) & (d.c.version == document.version)
        with self.engine.connect() as conn:
            if limit is not None:  # measured in the database, never loaded when too large
                size = conn.execute(sa.select(sa.func.length(d.c.content)).where(key)).scalar()
                if size is not None and size > limit:
                    raise ContentRefused(CONTENT_INVALID,
                                         f"content is {size} bytes, over rules.max_document_bytes {limit}")
            value = conn.execute(sa.select(sa.type_coerce(d.c.content, sa.LargeBinary)).where(key)).scalar()
        if value is None:
            raise FileNotFoundError("no content and no content_path")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ContentRefused(ROW_INVALID, f"column dmp_document.content: {type(value).__name__}, not bytes")
        value = bytes(value)
        if limit is not None and len(value) > limit:
            raise ContentRefused(CONTENT_INVALID, f"content is {len(value)} bytes, over rules.max_document_bytes {limit}")
        return value

    def write_back(self, rows: list[dict]) -> None:
        """Upsert `dmp_feed_status` rows (document_id, version, status, dmp_unique_id, fed_at, last_error)."""
        if not self.write_back_enabled or not rows:
            return
        with self.engine.begin() as conn:
            for row in rows:
                if conn.execute(_WRITE_BACK_UPDATE, {**row, "key_id": row["document_id"],
                                                     "key_version": row["version"]}).rowcount == 0:
                    conn.execute(_WRITE_BACK_INSERT, row)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the realpath check before opening stands alone
        return None


def _short(exc: Exception) -> str:
    return str(getattr(exc, "orig", exc)).splitlines()[0][:300]


def _candidate(row) -> Candidate | RowProblem:
    patient_id = _key_or_none(row, "patient_id")
    try:
        document_id = _key(row, "document_id")
    except _BadColumn as exc:
        return RowProblem(_shown_id(row["document_id"]), None, patient_id, str(exc))
    try:
        version = _version(row)
    except _BadColumn as exc:
        return RowProblem(document_id, None, patient_id, str(exc))
    try:
        _key(row, "patient_id")
        if row.get(_CONTENT_SET) and _text(row, "content_path"):
            raise _BadColumn("columns dmp_document.content and content_path are both set: keep only one")
        document = Document(
            document_id=document_id,
            version=version,
            patient_id=patient_id,
            finess_geo=_text(row, "finess_geo"),
            type_code=_text(row, "type_code"),
            title=_text(row, "title"),
            created_at=_datetime(row, "created_at"),
            service_start=_datetime(row, "service_start"),
            service_stop=_datetime(row, "service_stop"),
            author_rpps=_text(row, "author_rpps"),
            author_family_name=_text(row, "author_family_name"),
            author_given_name=_text(row, "author_given_name"),
            author_specialty_code=_text(row, "author_specialty_code"),
            legal_authenticator_rpps=_text(row, "legal_authenticator_rpps"),
            status=_text(row, "status"),
            mime_type=(_text(row, "mime_type") or "").lower() or None,  # case-insensitive (RFC 2045)
            content_path=_text(row, "content_path"),
            content=None,
            mask_professionals=_bool(row, "mask_professionals"),
            invisible_to_patient=_bool(row, "invisible_to_patient"),
            invisible_to_legal_representatives=_bool(row, "invisible_to_legal_representatives"),
            updated_at=_datetime(row, "updated_at"),
            activity=_text(row, "activity"),
            announced_at=_datetime(row, "announced_at"),
        )
        patient = None
        if row["p_patient_id"] is not None:
            patient = Patient(
                patient_id=_text(row, "p_patient_id"),
                ins_matricule=_text(row, "p_ins_matricule"),
                ins_oid=_text(row, "p_ins_oid"),
                identity_status=_text(row, "p_identity_status"),
                birth_family_name=_text(row, "p_birth_family_name"),
                birth_given_names=_text(row, "p_birth_given_names"),
                used_family_name=_text(row, "p_used_family_name"),
                used_given_name=_text(row, "p_used_given_name"),
                sex=_text(row, "p_sex"),
                birth_date=_date(row, "p_birth_date"),
                birth_place_code=_text(row, "p_birth_place_code"),
                opposed_to_feeding=_bool(row, "p_opposed_to_feeding"),
                deceased_at=_date(row, "p_deceased_at"),
            )
        for key in ("finess_geo", "type_code"):  # recorded in the ledger's columns of that size
            _key(row, key, required=False)
    except _BadColumn as exc:
        return RowProblem(document_id, version, patient_id, str(exc))
    return Candidate(document, patient)


_VERSION_MAX = 2**31 - 1  # the ledger's INTEGER column


def _version(row) -> int:
    value = row["version"]
    if isinstance(value, bool) or value is None:
        raise _BadColumn("column dmp_document.version: not an integer")
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
        if number is None and float(value) == int(value):  # 2.0 from a NUMERIC column; 1.5 is refused
            number = int(value)
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        number = None
    if number is None:
        raise _BadColumn("column dmp_document.version: not an integer")
    if not 0 <= number <= _VERSION_MAX:
        raise _BadColumn(f"column dmp_document.version: out of range (0 to {_VERSION_MAX})")
    return number


def _key(row, key: str, required: bool = True) -> str | None:
    """A key column (recorded in the ledger): present if `required`, no control character, not longer than
    the ledger's column."""
    value = row[key]
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _BadColumn(f"column {_column(key)}: not valid UTF-8") from None
    # Spaces only (a CHAR column's padding), as SQL's trim() when repeated keys are looked for: a key with a
    # tab or a newline around it is refused, not read as another row's key.
    value = None if value is None else str(value).strip(" ") or None
    if value is None:
        if required:
            raise _BadColumn(f"column {_column(key)}: empty")
        return None
    if has_unsafe(value):
        raise _BadColumn(f"column {_column(key)}: contains a control character")
    if len(value) > KEY_LIMITS[key]:
        raise _BadColumn(f"column {_column(key)}: longer than {KEY_LIMITS[key]} characters")
    return value


def _as_trimmed(raw_id):
    """A document_id as SQL's trim() gives it back in `_repeated_keys`: text (a BLOB is read as UTF-8 text, as
    SQLite's trim() does) without its spaces."""
    if isinstance(raw_id, (bytes, bytearray)):
        try:
            raw_id = bytes(raw_id).decode("utf-8")
        except UnicodeDecodeError:
            return raw_id
    return raw_id.strip(" ") if isinstance(raw_id, str) else raw_id


def _key_or_none(row, key: str) -> str | None:
    try:
        return _key(row, key)
    except _BadColumn:
        return None


def _shown_id(value) -> str:
    """A document id that cannot be recorded, as shown in reports (escaped and cut)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return "(none)" if value is None else printable(value, 64)


class _BadColumn(ValueError):
    pass


def _column(key: str) -> str:
    return ("dmp_patient." + key[2:]) if key.startswith("p_") else ("dmp_document." + key)


def _text(row, key) -> str | None:
    value = row[key]
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _BadColumn(f"column {_column(key)}: not valid UTF-8") from None
    value = str(value).strip()
    if _FORBIDDEN.search(value):  # no XML nor terminal can carry them; a NUL cannot even be opened as a path
        raise _BadColumn(f"column {_column(key)}: contains a control character")
    return value or None


# C0 controls but tab, newline and carriage return, DEL, C1 controls, non-characters and lone surrogates.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")


_TRUE, _FALSE = {"1", "true", "t", "yes", "y"}, {"0", "false", "f", "no", "n", ""}


def _bool(row, key) -> bool:
    value = row[key]
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _BadColumn(f"column {_column(key)}: not a boolean")


def _date(row, key) -> dt.date | None:
    value = _datetime(row, key, what="a date")
    return value.date() if value is not None else None


def _datetime(row, key, what: str = "a date-time") -> dt.datetime | None:
    value = row[key]
    if value is None or isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _BadColumn(f"column {_column(key)}: not {what}") from None
    # Store timestamps are local (Europe/Paris) wall-clock times: an explicit offset is converted to it.
    if parsed.tzinfo is not None:
        from zoneinfo import ZoneInfo

        parsed = parsed.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
    return parsed
