"""Chunk checksums computed inside each database: verify's first pass without shipping rows to Python.

For every chunk (a key range) each side runs ONE query that returns the row count and, per column, the
column's values of the chunk in key order joined into one string and hashed (Postgres: sha256 of a
string_agg; SQLite: group_concat, hashed here with hashlib: SQLite has no hash function of its own;
sha256 because it is the fastest one both have, with SHA instructions).
Values are rendered to text by SQL written per column type so equal data gives equal bytes:

| type | SQLite (as stored by SQLAlchemy) | Postgres |
|---|---|---|
| integer, boolean, ExactDecimal | the integer | `x::int8` (`x*10^s` for ExactDecimal) |
| float | integral and < 2^53: the integer, else `printf('%.12g')` | the same with extra_float_digits=-3 |
| text | as is | as is |
| DateTime | as is ('YYYY-MM-DD HH:MM:SS.ffffff') | `to_char` to that form |
| UTCDateTime | as is ('YYYY-MM-DDTHH:MM:SS.ffffff+00:00') | `to_char` of the UTC time to that form |
| Date | as is ('YYYY-MM-DD') | `x::text` (DateStyle ISO) |
| LargeBinary | `hex(x)` | `upper(encode(x, 'hex'))` |

Floats render at 12 significant digits, exactly the normalizer's tolerance (shadow.normalize.number),
so float noise is not a difference here either. Any other type (JSON, Numeric, unknown decorators)
makes the table use the Python checksums (shadow.checksum) instead.

Why this cannot hide a difference the Python checksums would see: a rendering is never coarser than
normalization (equal text means equal normalized values); values are joined with \\x01 and NULL is
\\x03, and the SQLite side checks that those bytes occur only where it put them (so its string parses
one way) and compares per-column NULL counts with Postgres' (so Postgres' identical string parses the
same way); a value of an unexpected storage class (a blob in a text column, text in a number column)
makes the chunk "unknown". A rendering that differs for equal data (another text form of a timestamp,
a rare misrounded float) only marks the chunk as differing: verify then bisects it with the exact
Python comparison, which decides. So the fast pass may cost a bisection, never a wrong answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table
from sqlalchemy import types as sqltypes

from dualwrite.apply.rule import pk_columns

Key = tuple[Any, ...]
SEP, NUL = "\x01", "\x03"
TEXT_KINDS = ("text", "text_exact")  # keys ordered byte-wise on both sides (COLLATE "C" on Postgres)
UNKNOWN = -1  # the hash of a chunk whose SQLite string cannot be trusted: never equals a real hash
_INT53 = "9007199254740992"


@dataclass(frozen=True)
class Col:
    name: str
    kind: str
    nullable: bool
    scale: int = 0


def _kind(col: Any) -> tuple[str, int] | None:
    """The rendering rule of a column's type, or None (unsupported: the Python path decides)."""
    t = col.type
    try:  # the project's own decorators: storage formats known here
        from dualwrite.types import ExactDecimal, UTCDateTime

        if isinstance(t, UTCDateTime):
            return "utc", 0
        if isinstance(t, ExactDecimal):
            return "exact", t.scale
    except ImportError:  # pragma: no cover - stores not installed
        pass
    if isinstance(t, sqltypes.TypeDecorator | sqltypes.JSON | sqltypes.Interval | sqltypes.Time):
        return None
    if isinstance(t, sqltypes.DateTime):
        return None if t.timezone else ("datetime", 0)
    for base, kind in _RULES:
        if isinstance(t, base):
            return kind, 0
    return None


# The first match wins (a DateTime was decided above, by its time zone).
_RULES: tuple[tuple[type, str], ...] = (
    (sqltypes.Boolean, "bool"),
    (sqltypes.Integer, "int"),
    (sqltypes.Float, "float"),
    (sqltypes.Date, "date"),
    (sqltypes.String, "text"),
    (sqltypes.LargeBinary, "bytes"),
)


def plan(table: Table) -> list[Col] | None:
    cols = []
    for c in table.columns:
        k = _kind(c)
        if k is None:
            return None
        cols.append(Col(c.name, k[0], bool(c.nullable) and not c.primary_key, k[1]))
    return cols


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_render(c: Col) -> tuple[str, str]:
    """(text expression, guard) on SQLite; the guard is true for a value of an unexpected storage class
    (SQLite orders NULL < numbers < text < blob, so comparisons with '' and X'' classify without a call)."""
    x = _q(c.name)
    y = f"+{x}"  # unary + drops the column's affinity, so the guards compare storage classes
    if c.kind in ("int", "bool", "exact"):
        return x, f"{y} >= ''"
    if c.kind == "float":
        expr = (
            f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = CAST({x} AS INTEGER) AND abs({x}) < {_INT53}.0 "
            f"THEN CAST(CAST({x} AS INTEGER) AS TEXT) ELSE printf('%.12g', {x}) END"
        )
        return expr, f"{y} >= ''"
    if c.kind == "float_exact":  # exact: integral below 2^53 as the integer, else mantissa p exponent
        # from 2^53 on, float() of a stored integer could round; and subnormals, infinities: the client decides
        guard = f"{y} >= '' OR abs({x}) >= {_INT53} OR {x} <> 0 AND abs({x}) < {_TINY}"
        return f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 0 THEN '0' ELSE {_exact(x, 'sqlite')} END", guard
    if c.kind == "text_exact":  # stored text only (a number's SQLite text need not be its cast's str())
        return x, f"{y} < '' OR {y} >= X''"
    if c.kind in ("datetime", "utc"):  # as stored; Postgres renders SQLAlchemy's storage format
        return x, f"{y} >= X''"
    if c.kind == "bytes":
        return f"CASE WHEN {x} IS NULL THEN NULL ELSE hex({x}) END", f"{y} < X''"
    return x, f"{y} >= X''"  # text, date


def postgres_render(c: Col) -> str:
    x = _q(c.name)
    if c.kind == "int":
        return f"{x}::text"
    if c.kind == "bool":
        return f"{x}::int::text"
    if c.kind == "exact":
        return f"({x} * 1e{c.scale})::int8::text"
    if c.kind == "float":  # extra_float_digits = -3: %.12g (of a float8: a real would get 3 digits)
        v = f"{x}::float8"
        return f"CASE WHEN {v} = trunc({v}) AND abs({v}) < {_INT53} THEN {v}::int8::text ELSE {v}::text END"
    if c.kind == "float_exact":
        v = f"{x}::float8"
        return (
            f"CASE WHEN {v} = 0 THEN '0' WHEN {v} = 'NaN' OR abs({v}) < {_TINY} OR abs({v}) > {_HUGE} "
            f"THEN {v}::text ELSE {_exact(v, 'postgresql')} END"
        )
    if c.kind == "text_exact":
        return f"{x}::text"
    if c.kind == "bytes":
        return f"upper(encode({x}, 'hex'))"
    if c.kind == "datetime":  # SQLAlchemy's SQLite DATETIME storage format
        return f"to_char({x}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if c.kind == "utc":  # dualwrite.types.UTCDateTime's SQLite text
        return f"""to_char({x} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    return f"{x}::text"  # text, date


# float_exact: a float is m || 'p' || e with |x| = m * 2^(e-52) exactly (m the 53-bit mantissa, e its binary
# exponent: floor(log2 |x|), corrected by exact powers of two for log2's last-bit error). Equal text is then
# an equal double, unlike printf('%.17g'), which SQLite does not round exactly. Subnormals and infinities
# are untrusted on SQLite (Postgres renders them as text, so they never match).
_TINY, _HUGE = "1e-290", "1e308"


# How each engine spells what the exact rendering needs (one template for both: they must agree).
_SPELLING = {
    "sqlite": {
        "lg": "CAST(floor(log2(abs({v}))) AS INTEGER)",
        "pow": "pow(2, {n})",
        "integral": "{v} = CAST({v} AS INTEGER)",
        "int": "CAST({n} AS INTEGER)",
        "text": "CAST({n} AS TEXT)",
        "bit": "({c})",
    },
    "postgresql": {
        "lg": "floor(ln(abs({v})) / ln(2::float8))::int",
        "pow": "power(2::float8, {n})",
        "integral": "{v} = trunc({v})",
        "int": "({n})::int8",
        "text": "({n})::text",
        "bit": "({c})::int",
    },
}


def _exact(v: str, dialect: str) -> str:
    sp = _SPELLING[dialect]
    lg = sp["lg"].format(v=v)
    power = sp["pow"].format(n=lg)
    below, above = sp["bit"].format(c=f"{power} > abs({v})"), sp["bit"].format(c=f"{power} <= abs({v}) / 2")
    e = f"({lg} - {below} + {above})"
    mantissa = sp["text"].format(n=sp["int"].format(n=f"{v} / {sp['pow'].format(n=f'{e} - 52')}"))
    integer = sp["text"].format(n=sp["int"].format(n=v))
    integral = sp["integral"].format(v=v)
    return f"CASE WHEN {integral} AND abs({v}) < {_INT53} THEN {integer} ELSE {mantissa} || 'p' || {e} END"


# Postgres settings the renderings rely on (SET LOCAL: the pooled connection keeps its own).
PG_SETTINGS = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "SET LOCAL extra_float_digits = -3",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL max_parallel_workers_per_gather = 0",  # keep the subquery's key order into string_agg
)


Span = tuple[Key | None, Key | None]  # a key range [lo, hi); None: open


@dataclass(frozen=True)
class KeySet:
    """Some keys, summed as one chunk (an incremental verify's touched keys)."""

    keys: tuple[Key, ...]


@dataclass
class ChunkSum:
    count: int
    nulls: tuple[int, ...]
    digests: tuple[str, ...]
    trusted: bool = True

    def key(self) -> int:
        """One integer for shadow.checksum.Summary.hash; UNKNOWN for an untrusted chunk."""
        if not self.trusted:
            return UNKNOWN
        text = f"{self.nulls}|{'|'.join(self.digests)}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class ChunkQuery:
    """The per-chunk checksum query of one side, as raw SQL over the DBAPI (no per-chunk compiling)."""

    def __init__(self, table: Table, cols: list[Col], dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.cols = cols
        self.pk = pk_columns(table)
        pk_types = {c.name: c.kind for c in cols}
        keys = [
            _q(k) + (' COLLATE "C"' if self.pg and pk_types.get(k) in TEXT_KINDS else "") for k in self.pk
        ]
        self.key = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
        # equality needs no collation, and a COLLATE "C" unlike the index's would keep Postgres off it
        self.plain_key = _q(self.pk[0]) if len(self.pk) == 1 else f"({', '.join(_q(k) for k in self.pk)})"
        self.order = ", ".join(keys)
        self.mark = "%s" if self.pg else "?"
        self.nullable = [i for i, c in enumerate(cols) if c.nullable]
        self.name = name = _q(table.name)
        if self.pg:
            inner = ", ".join(f"{postgres_render(c)} AS c{i}" for i, c in enumerate(cols))
            aggs = [f"count(c{i})" for i in self.nullable]
            aggs += [
                f"sha256(convert_to(string_agg(coalesce(c{i}, E'\\x03'), E'\\x01'), 'UTF8'))" for i in range(len(cols))
            ]
            rows = f"SELECT {inner} FROM {name} {{where}} ORDER BY {self.order}"
            self.sql = f"SELECT count(*), {', '.join(aggs)} FROM ({rows}) s"
        else:
            renders = [sqlite_render(c) for c in cols]
            guard = " OR ".join(f"({g})" for _, g in renders)
            aggs = [f"max({guard})"] + [f"count({_q(cols[i].name)})" for i in self.nullable]
            aggs += [f"CAST(group_concat(ifnull({r}, char(3)), char(1)) AS BLOB)" for r, _ in renders]
            rows = f"SELECT * FROM {name} {{where}} ORDER BY {self.order}"
            self.ordered_sql = f"SELECT count(*), {', '.join(aggs)} FROM ({rows})"
            # a range scan of one key (rowid or its index) is in key order already: no sort
            one = f"SELECT count(*), {', '.join(aggs)} FROM {name} {{where}}"
            self.sql = one if len(self.pk) == 1 else self.ordered_sql
        if self.pg:
            self.ordered_sql = self.sql

    def statement(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        where, params = self.where(lo, hi)
        return self.sql.format(where=where), params

    def select(self, part: Span | KeySet) -> tuple[str, list[Any]]:
        """The checksum query of a key range or of a set of keys (ordered by key: an IN list is not)."""
        if not isinstance(part, KeySet):
            return self.statement(*part)
        keys = part.keys
        if len(self.pk) == 1:
            where = f"WHERE {self.plain_key} IN ({', '.join(self.mark for _ in keys)})"
        else:
            row = f"({', '.join(self.mark for _ in self.pk)})"
            rows = ", ".join(row for _ in keys)
            where = f"WHERE {self.plain_key} IN ({rows if self.pg else f'VALUES {rows}'})"
        return self.ordered_sql.format(where=where), [v for k in keys for v in k]

    def split_statement(self, lo: Key | None, hi: Key | None, step: int) -> tuple[str, list[Any]]:
        """Every step-th existing key of the range (after its first): split points for a bisection."""
        where, params = self.where(lo, hi)
        keys = ", ".join(_q(k) for k in self.pk)
        inner = f"SELECT {keys}, row_number() OVER (ORDER BY {self.order}) AS rn FROM {self.name} {where}"
        mod = "%%" if self.pg else "%"  # psycopg2 reads a lone % as a placeholder
        return f"SELECT {keys} FROM ({inner}) s WHERE rn {mod} {int(step)} = 1 AND rn > 1 ORDER BY {self.order}", params

    def where(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        conds, params = [], []
        for op, bound in ((">=", lo), ("<", hi)):
            if bound is None:
                continue
            marks = ", ".join(self.mark for _ in bound)
            conds.append(f"{self.key} {op} {marks if len(bound) == 1 else f'({marks})'}")
            params.extend(bound)
        return (f"WHERE {' AND '.join(conds)}" if conds else ""), params

    def parse(self, row: Sequence[Any]) -> ChunkSum:
        n = int(row[0])
        if self.pg:
            nn = len(self.nullable)
            nonnull = dict(zip(self.nullable, row[1 : 1 + nn], strict=True))
            nulls = tuple(n - int(nonnull[i]) for i in self.nullable)
            return ChunkSum(n, nulls, tuple(bytes(d).hex() if d is not None else "" for d in row[1 + nn :]))
        guard, nn = row[1], len(self.nullable)
        nonnull = dict(zip(self.nullable, row[2 : 2 + nn], strict=True))
        blobs = row[2 + nn :]
        trusted = not guard
        nulls, digests = [], []
        for i, blob in enumerate(blobs):
            data = bytes(blob) if blob is not None else b""
            want_nulls = n - int(nonnull.get(i, n))
            # Separators and NULL marks only where this side put them: the string parses one way.
            if n and (data.count(b"\x01") != n - 1 or data.count(b"\x03") != want_nulls):
                trusted = False
            if i in nonnull:
                nulls.append(want_nulls)
            digests.append(hashlib.sha256(data).hexdigest() if n else "")
        return ChunkSum(n, tuple(nulls), tuple(digests), trusted)


def split_keys(engine: Engine, query: ChunkQuery, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(*query.split_statement(lo, hi, step))
        keys = [tuple(r) for r in cur.fetchall()]
        raw.rollback()
        return keys
    finally:
        raw.close()


def chunk_sums(
    engine: Engine,
    query: ChunkQuery,
    ranges: Sequence[Span | KeySet],
    on_range: Callable[[], None] | None = None,
) -> list[ChunkSum]:
    """Every range's (or key set's) ChunkSum in one read transaction (one snapshot, as a single scan would
    see); `on_range()` after each query (verify's progress)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if query.pg:
            for stmt in PG_SETTINGS:
                cur.execute(stmt)
        else:
            cur.execute("BEGIN")
        if query.pg:
            out = []
            for part in ranges:
                cur.execute(*query.select(part))
                out.append(query.parse(cur.fetchone()))
                if on_range is not None:
                    on_range()
        else:  # hash chunk i here (hashlib drops the GIL) while SQLite aggregates chunk i+1
            with ThreadPoolExecutor(1, thread_name_prefix="verify-hash") as pool:
                pending = []
                for part in ranges:
                    cur.execute(*query.select(part))
                    pending.append(pool.submit(query.parse, cur.fetchone()))
                    if on_range is not None:
                        on_range()
                out = [f.result() for f in pending]
        cur.close()
        raw.rollback()
        return out
    finally:
        raw.close()


def ranges(
    sqlite: Engine, table: Table, cols: list[Col], segment_rows: int
) -> list[tuple[Key | None, Key | None]]:
    """Key ranges of about `segment_rows` SQLite rows; the first and last are open (Postgres rows beyond
    SQLite's keys fall into them). Dense integer keys are cut by value (min, max, count: index look-ups);
    other keys at every segment_rows-th key (one window query over SQLite's key index)."""
    pk = pk_columns(table)
    name = _q(table.name)
    raw = sqlite.raw_connection()
    try:
        cur = raw.cursor()
        bounds: list[Key] | None = None
        if int_key(table, cols):
            k = _q(pk[0])
            cur.execute(f"SELECT min({k}), max({k}), count(*) FROM {name}")
            lo, hi, n = cur.fetchone()
            if not n:
                return [(None, None)]
            span = hi - lo + 1
            if span <= 2 * n:  # sparse keys would make ranges of very different sizes
                width = max(1, -(-segment_rows * span // n))
                bounds = [(b,) for b in range(lo + width, hi + 1, width)]
        if bounds is None:
            keys = ", ".join(_q(k) for k in pk)
            cur.execute(
                f"SELECT {keys} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS rn FROM {name}) "
                f"WHERE rn % ? = 1 AND rn > 1 ORDER BY {keys}",
                (max(1, segment_rows),),
            )
            bounds = [tuple(r) for r in cur.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    edges: list[Key | None] = [None, *bounds, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def int_key(table: Table, cols: list[Col]) -> bool:
    pk = pk_columns(table)
    return len(pk) == 1 and next(c.kind for c in cols if c.name == pk[0]) == "int"


def supported_keys(table: Table, cols: list[Col]) -> bool:
    """Integer and text keys only: their raw values bind the same on both DBAPIs (no type processing)."""
    kinds = {c.name: c.kind for c in cols}
    return all(kinds[k] == "int" or kinds[k] in TEXT_KINDS for k in pk_columns(table))
