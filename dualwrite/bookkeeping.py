"""The bookkeeping tables dualwrite keeps on BOTH backends (either can be primary or secondary).

On Postgres they live in a schema of their own (Settings.state_schema, `_dualwrite` by default), never
in the application's: the engines' search_path is `<pg_schema>, <state_schema>`, so the apply rule's SQL
finds them by name, and they are created there explicitly. On SQLite they must share the application's
file: the outbox row is written in the same transaction as the change.

- `_dw_outbox`: change events written in the same transaction as the change (primary side).
- `_dw_versions`: per (table, key) the `seq` of the last event (or backfill chunk) applied to this side.
  The row outlives a delete, so it is also the tombstone; its unique index is what serialises a live
  event and a backfill chunk that touch the same key (see apply.py).
- `_dw_ranges` (Postgres only, apply/ranges.py): one version per key range a backfill chunk copied, so
  copied keys need no `_dw_versions` row of their own.
- `_dw_meta`: `last_seq` (the sequence high-water mark, bumped under a row lock at commit so seq order
  is commit order) and `is_primary` (1 on the side that accepts writes; the fence for a primary switch).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dualwrite.types import UTCDateTime

RANGES = "_dw_ranges"
_RANGES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {{schema}}.{RANGES} (tbl text NOT NULL, span int8range NOT NULL, seq bigint NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {RANGES}_span ON {{schema}}.{RANGES} USING gist (span)",
)


def create_ranges(conn: Connection, schema: str) -> None:
    """`_dw_ranges` in the state schema (Postgres only; idempotent; see apply/ranges.py)."""
    quoted = conn.dialect.identifier_preparer.quote(schema)
    for stmt in _RANGES_DDL:
        conn.exec_driver_sql(stmt.format(schema=quoted))


internal_metadata = MetaData()

Seq = BigInteger().with_variant(Integer, "sqlite")

# dualwrite's own tables, each declared once: shaped like checkpoint.py's and the tests' tables, nothing shared
outbox = Table(
    "_dw_outbox",
    internal_metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
    Column("id", String(32), nullable=False),
    Column("tbl", Text, nullable=False),
    Column("op", String(8), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

versions = Table(
    "_dw_versions",
    internal_metadata,
    Column("tbl", Text, primary_key=True),
    Column("pk", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

meta = Table(
    "_dw_meta",
    internal_metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


def dialect_insert(conn: Connection | Engine, table: Table):  # type: ignore[no-untyped-def]
    """INSERT with ON CONFLICT support for the connection's dialect."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def state_schema_of(conn: Connection) -> str | None:
    """The schema of dualwrite's tables on this Postgres connection: the last entry of the search_path
    that dualwrite.engines set (None on SQLite)."""
    if conn.dialect.name != "postgresql":
        return None
    raw = str(conn.exec_driver_sql("SHOW search_path").scalar())
    return _split_search_path(raw)[-1]


def _split_search_path(raw: str) -> list[str]:
    """`"a b", c, "x""y"` -> ['a b', 'c', 'x"y'] (Postgres' quoting of identifiers)."""
    out, buf, quoted, i = [], "", False, 0
    while i < len(raw):
        ch = raw[i]
        if quoted:
            if ch == '"' and raw[i + 1 : i + 2] == '"':
                buf, i = buf + '"', i + 1
            elif ch == '"':
                quoted = False
            else:
                buf += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            out.append(buf.strip())
            buf = ""
        else:
            buf += ch
        i += 1
    out.append(buf.strip())
    return [x for x in out if x]


def in_state_schema(conn: Connection) -> Connection:
    """`conn` with dualwrite's tables mapped into the state schema (for CREATE TABLE and ALTER)."""
    schema = state_schema_of(conn)
    if schema is None:
        return conn
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {conn.dialect.identifier_preparer.quote(schema)}")
    return conn.execution_options(schema_translate_map={None: schema})


def has_state_table(conn: Connection, name: str) -> bool:
    """Whether one of dualwrite's tables exists where this connection looks for it."""
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql("SELECT to_regclass(%(n)s) IS NOT NULL", {"n": name}).scalar() is True
    return inspect(conn).has_table(name)


def missing_bookkeeping(conn: Connection) -> list[str]:
    """dualwrite's tables that are not where this connection looks for them (`dualwrite init` makes them)."""
    return [t.name for t in internal_metadata.sorted_tables if not has_state_table(conn, t.name)]


def bookkeeping_gaps(sqlite: Engine, postgres: Engine, state_schema: str) -> list[str]:
    """Where dualwrite's tables are missing, one entry a side ('sqlite (app.db): _dw_meta, _dw_outbox')."""
    gaps = []
    for side, engine in (("sqlite", sqlite), ("postgres", postgres)):
        with engine.connect() as conn:
            missing = missing_bookkeeping(conn)
            conn.rollback()
        if missing:
            where = engine.url.database if side == "sqlite" else f"schema {state_schema}"
            gaps.append(f"{side} ({where}): {', '.join(missing)}")
    return gaps


def gaps_text(gaps: list[str]) -> str:
    """bookkeeping_gaps as the one sentence the gate, doctor and the CLI print (each adds its remedy)."""
    return f"dualwrite's tables are missing on {'; '.join(gaps)}"


def create_bookkeeping(conn: Connection, *, primary: bool) -> list[str]:
    """Create the bookkeeping tables if missing and seed `_dw_meta` (idempotent); return the names created."""
    missing = missing_bookkeeping(conn)
    internal_metadata.create_all(in_state_schema(conn), checkfirst=True)
    schema = state_schema_of(conn)
    if schema is not None:
        if not has_state_table(conn, RANGES):
            missing.append(RANGES)
        create_ranges(conn, schema)
    ins = dialect_insert(conn, meta)
    conn.execute(ins.values(name="last_seq", value=0).on_conflict_do_nothing(index_elements=["name"]))
    conn.execute(
        ins.values(name="is_primary", value=1 if primary else 0).on_conflict_do_nothing(index_elements=["name"])
    )
    return missing


def create_schema(engine: Engine, app_tables: MetaData | Iterable[Table] | None = None, *, primary: bool) -> list[str]:
    """Create the missing application tables (a MetaData's, or the Tables given; none if None) and the
    bookkeeping (idempotent); return the names created."""
    tables = list(app_tables.sorted_tables if isinstance(app_tables, MetaData) else app_tables or ())
    with engine.begin() as conn:
        created = [t.name for t in tables if not inspect(conn).has_table(t.name)]
        by_md: dict[int, tuple[MetaData, list[Table]]] = {}
        for t in tables:
            by_md.setdefault(id(t.metadata), (t.metadata, []))[1].append(t)
        for md, group in by_md.values():
            md.create_all(conn, tables=group, checkfirst=True)
        return created + create_bookkeeping(conn, primary=primary)


def read_meta(conn: Connection, name: str) -> int | None:
    return conn.execute(select(meta.c.value).where(meta.c.name == name)).scalar()


def write_meta(conn: Connection, name: str, value: int) -> None:
    ins = dialect_insert(conn, meta).values(name=name, value=value)
    conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_={"value": value}))


def move_sequences_past_keys(conn: Connection, tables: Iterable[Table], floors: dict[str, int] | None = None) -> None:
    """On Postgres: move the serial/identity sequence of each table's single-column integer key past the
    largest key (and past `floors[table]`, e.g. the largest id SQLite handed out), never lowering it. Rows
    copied or applied arrive with explicit ids, which do not advance the sequence, so without this the
    first insert after Postgres becomes the primary would collide."""
    prep = conn.dialect.identifier_preparer
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or pk[0].type._type_affinity is not Integer:  # noqa: SLF001 - the generic type
            continue
        name = prep.format_table(table)  # parsed as SQL by pg_get_serial_sequence: quoted where needed
        seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": name, "c": pk[0].name}).scalar()
        if seq is None:
            continue
        top = max(conn.execute(select(func.max(pk[0]))).scalar() or 0, (floors or {}).get(table.name, 0))
        # the last value handed out (a fresh sequence has handed out none): raise it to `top`, never lower
        used = f"(SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {seq})"
        raise_to = text(f"SELECT setval(CAST(:s AS regclass), :top, true) WHERE :top > {used}")
        conn.execute(raise_to, {"s": seq, "top": top})
