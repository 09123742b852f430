"""How each column type is rendered to text inside SQLite and Postgres so that equal data gives equal
bytes on both sides (the in-database checksums of verify.sql_checksums and migrate.sums).

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

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy import types as sqltypes

SEP, NUL = "\x01", "\x03"
TEXT_KINDS = ("text", "text_exact")  # keys ordered byte-wise on both sides (COLLATE "C" on Postgres)
_INT53 = "9007199254740992"
_INT52 = "4503599627370496"


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


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_render(c: Col) -> tuple[str, str]:
    """(text expression, guard) on SQLite; the guard is true for a value of an unexpected storage class
    (SQLite orders NULL < numbers < text < blob, so comparisons with '' and X'' classify without a call)."""
    x = quote_name(c.name)
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
    x = quote_name(c.name)
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
    },
    "postgresql": {
        "lg": "floor(ln(abs({v})) / ln(2::float8))::int",
        "pow": "power(2::float8, {n})",
        "integral": "{v} = trunc({v})",
        "int": "({n})::int8",
        "text": "({n})::text",
    },
}


def _exact(v: str, dialect: str) -> str:
    """The mantissa at the logarithm's exponent when it is 53 bits long (the logarithm was right), else the
    exponent corrected by one: one logarithm per branch test and use, not six per value (SQLite has no
    common subexpressions; the float was most of its sums' cost). The division by a power of two is exact."""
    sp = _SPELLING[dialect]
    lg = sp["lg"].format(v=v)

    def rendered(e: str) -> str:
        mantissa = sp["text"].format(n=sp["int"].format(n=f"{v} / {sp['pow'].format(n=f'{e} - 52')}"))
        return f"{mantissa} || 'p' || {e}"

    integer = sp["text"].format(n=sp["int"].format(n=v))
    integral = sp["integral"].format(v=v)
    return (
        f"CASE WHEN {integral} AND abs({v}) < {_INT53} THEN {integer} "
        f"WHEN abs({v}) / {sp['pow'].format(n=f'{lg} - 52')} BETWEEN {_INT52} AND {_INT53} - 1 THEN {rendered(lg)} "
        f"WHEN {sp['pow'].format(n=lg)} > abs({v}) THEN {rendered(f'({lg} - 1)')} ELSE {rendered(f'({lg} + 1)')} END"
    )


# Postgres settings the renderings rely on (SET LOCAL: the pooled connection keeps its own).
PG_SETTINGS = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "SET LOCAL extra_float_digits = -3",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL max_parallel_workers_per_gather = 0",  # keep the subquery's key order into string_agg
)
