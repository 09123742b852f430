"""Referential actions on the primary (ON DELETE CASCADE / SET NULL / SET DEFAULT, ON UPDATE ...) change
rows that no RETURNING reports. Capture them by watching: before a statement that can fire an action, the
rows it can reach (children of the affected rows, and recursively the children of cascaded deletes) are
read and locked; after it, the watched rows are read again by primary key: a row that is gone gets a
delete event, a row that changed gets an upsert with its stored image. Locking (FOR UPDATE on Postgres;
SQLite's BEGIN IMMEDIATE already excludes every other writer) keeps the watched set exact: a concurrent
insert of a child must wait for our parent row's lock, and then fails its foreign key check.

Foreign keys come from the tables' metadata. Two shapes are refused when the catalog is built, because
watching cannot find the changed rows: an action that sets primary-key columns (SET NULL / SET DEFAULT on a
key: the row's new key is unknown), and an action whose changed columns are in turn referenced with an ON
UPDATE action (a chain of update cascades).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, and_, or_, select, tuple_

from dualwrite.apply.statements import pk_columns
from dualwrite.errors import UnsupportedSchemaError

ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")
# Keys per IN list (bound parameters stay well under SQLite's limit).
CHUNK = 500


@dataclass(frozen=True)
class Referrer:
    """A foreign key of `child` onto a parent table, with at least one referential action."""

    child: Table
    child_cols: tuple[str, ...]
    parent_cols: tuple[str, ...]
    ondelete: str | None
    onupdate: str | None


def _action(text: str | None) -> str | None:
    norm = " ".join((text or "").upper().split())
    return norm if norm in ACTIONS else None


def build_referrers(tables: Iterable[Table]) -> dict[str, list[Referrer]]:
    """Parent table name -> its referrers among `tables`; raises UnsupportedSchemaError (see above)."""
    tables = list(tables)
    names = {t.name for t in tables}
    out: dict[str, list[Referrer]] = {}
    for child in tables:
        for fkc in child.foreign_key_constraints:
            parent = fkc.referred_table.name
            od, ou = _action(fkc.ondelete), _action(fkc.onupdate)
            if parent not in names or not (od or ou):
                continue
            pairs = [(e.parent.name, e.column.name) for e in fkc.elements]
            ref = Referrer(child, tuple(c for c, _ in pairs), tuple(p for _, p in pairs), od, ou)
            if {"SET NULL", "SET DEFAULT"} & {od, ou} and set(ref.child_cols) & set(pk_columns(child)):
                raise UnsupportedSchemaError(
                    f"table {child.name!r}: a SET NULL/SET DEFAULT action on primary-key column(s) "
                    f"{', '.join(ref.child_cols)} cannot be captured (the row's new key is unknown)"
                )
            out.setdefault(parent, []).append(ref)
    # columns a referential action itself may change
    changed = {
        (r.child.name, c) for refs in out.values() for r in refs if r.onupdate or r.ondelete != "CASCADE"
        for c in r.child_cols
    }
    for parent, refs in out.items():
        for r in refs:
            chained = sorted(c for c in r.parent_cols if (parent, c) in changed)
            if r.onupdate and chained:
                raise UnsupportedSchemaError(
                    f"table {r.child.name!r}: ON UPDATE {r.onupdate} onto {parent}.{', '.join(chained)}, which "
                    "a referential action itself changes, is a chain of cascades that cannot be captured"
                )
    return out


def key_in(conn: Connection, table: Table, cols: Sequence[str], values: Sequence[tuple[Any, ...]]) -> Any:
    """`cols` IN `values`, as the dialect renders tuples."""
    if len(cols) == 1:
        return table.c[cols[0]].in_([v[0] for v in values])
    if conn.dialect.name == "postgresql":
        return tuple_(*(table.c[c] for c in cols)).in_(values)
    return or_(*(and_(*(table.c[c] == x for c, x in zip(cols, v, strict=True))) for v in values))


def _read(conn: Connection, table: Table, cols: Sequence[str], values: Iterable[tuple[Any, ...]]) -> list[Any]:
    """Rows of `table` whose `cols` match one of `values`, locked on Postgres."""
    values = [v for v in dict.fromkeys(values) if None not in v]
    rows: list[Any] = []
    for i in range(0, len(values), CHUNK):
        query = select(table).where(key_in(conn, table, cols, values[i : i + CHUNK]))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(of=table)
        rows.extend(conn.execute(query).mappings())
    return rows


@dataclass
class Watch:
    """Rows a statement's referential actions may change, read before it runs."""

    rows: dict[tuple[str, tuple[Any, ...]], tuple[Table, dict[str, Any]]] = field(default_factory=dict)
    # ON UPDATE CASCADE: children follow the parent's new values (their key may change with them)
    follow: list[Referrer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.follow)


def watch(
    conn: Connection,
    referrers: Mapping[str, list[Referrer]],
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    delete: bool,
    changed: set[str] | None = None,
) -> Watch:
    """The rows that deleting `rows` of `table` (delete=True), or updating their `changed` columns, can
    reach through referential actions; cascaded deletes are followed to any depth (iteratively)."""
    w = Watch()
    expanded: set[tuple[str, tuple[Any, ...]]] = set()
    queue: list[tuple[Table, Sequence[Mapping[str, Any]], bool]] = [(table, rows, delete)]
    while queue:
        parent, parent_rows, deleting = queue.pop()
        for ref in referrers.get(parent.name, ()):
            action = ref.ondelete if deleting else ref.onupdate
            if action is None or (not deleting and not (changed or set()) & set(ref.parent_cols)):
                continue
            if not deleting and action == "CASCADE":
                w.follow.append(ref)
            kids = _read(conn, ref.child, ref.child_cols, (tuple(r[c] for c in ref.parent_cols) for r in parent_rows))
            pk = pk_columns(ref.child)
            fresh = []
            for kid in kids:
                key = (ref.child.name, tuple(kid[c] for c in pk))
                w.rows.setdefault(key, (ref.child, dict(kid)))
                if deleting and action == "CASCADE" and key not in expanded:
                    expanded.add(key)
                    fresh.append(kid)
            if fresh:
                queue.append((ref.child, fresh, True))
    return w


def changes_after(
    conn: Connection, w: Watch, new_parent_rows: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[Table, str, dict[str, Any]]]:
    """(table, op, image) for every watched row that is gone or changed, and every child that followed an
    ON UPDATE CASCADE to the parent's new values."""
    by_table: dict[str, tuple[Table, list[tuple[Any, ...]]]] = {}
    for (name, key), (table, _row) in w.rows.items():
        by_table.setdefault(name, (table, []))[1].append(key)
    now: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    for name, (table, keys) in by_table.items():
        pk = pk_columns(table)
        for row in _read(conn, table, pk, keys):
            now[(name, tuple(row[c] for c in pk))] = dict(row)
    for ref in w.follow:
        pk = pk_columns(ref.child)
        values = (tuple(r[c] for c in ref.parent_cols) for r in new_parent_rows)
        for row in _read(conn, ref.child, ref.child_cols, values):
            now.setdefault((ref.child.name, tuple(row[c] for c in pk)), dict(row))
    tables = {name: table for name, (table, _keys) in by_table.items()} | {r.child.name: r.child for r in w.follow}
    out: list[tuple[Table, str, dict[str, Any]]] = []
    for key, (table, before) in w.rows.items():
        after = now.get(key)
        if after is None:
            out.append((table, "delete", before))
        elif after != before:
            out.append((table, "upsert", after))
    out.extend((tables[key[0]], "upsert", row) for key, row in now.items() if key not in w.rows)
    return out


def refuse_upsert_into_referenced(stmt: Any, table: Table, refs: Sequence[Referrer]) -> None:
    """An INSERT .. ON CONFLICT DO UPDATE may change columns other tables reference with ON UPDATE actions,
    on rows nobody can name before it runs: refuse it (an UPDATE of those columns is captured)."""
    conflict = getattr(stmt, "_post_values_clause", None)
    sets = getattr(conflict, "update_values_to_set", None)
    if not sets:
        return
    keys = sets.keys() if isinstance(sets, dict) else [k for k, _v in sets]
    names = {str(getattr(k, "key", getattr(k, "name", k))) for k in keys}
    hit = sorted(names & {c for r in refs if r.onupdate for c in r.parent_cols})
    if hit:
        raise ValueError(
            f"upsert into {table.name!r} may change {', '.join(hit)}, referenced with ON UPDATE actions: "
            "use update() for those columns so the cascaded rows are captured"
        )
