"""`verify --fix`: what it would touch (a plan the CLI shows and asks about), then the fix itself.

Only rows dualwrite wrote are touched: a Postgres key with a `_dw_versions` entry (a live event, a backfill
chunk, a replay or an earlier fix put it there). A differing or extra row without one was written by
someone else (directly, or by a plain `migrate` COPY) and is left as it is and reported as `unowned`,
unless the caller asks for those too (`unowned=True`, the CLI's --fix-unowned). Missing rows are inserted:
that overwrites nothing.

The fix re-reads the keys from SQLite in one read transaction with `_dw_meta.last_seq` = S and applies them
through the apply rule with version S (extras: a delete event with version S). A key whose Postgres version
is already >= S is left alone and reported as `stale` (a newer change owns it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from dualwrite.apply.rule import apply_events, apply_snapshot_rows
from dualwrite.bookkeeping import read_meta, versions
from dualwrite.errors import first_line
from dualwrite.events import ChangeEvent, key_text
from dualwrite.verify.row_checksums import Key

if TYPE_CHECKING:
    from dualwrite.verify.verifier import TableReport, TableVerifier, VerifyReport

KEYS_PER_QUERY = 1000
UNOWNED_REPORTED = 1000  # keys listed in the report (all are counted in the plan)


@dataclass
class FixPlan:
    table: str
    upserts: list[Key] = field(default_factory=list)  # missing, and differing keys dualwrite wrote
    deletes: list[Key] = field(default_factory=list)  # extra keys dualwrite wrote
    unowned: list[Key] = field(default_factory=list)  # differing/extra keys it never wrote: left as they are

    @property
    def empty(self) -> bool:
        return not (self.upserts or self.deletes)


def owned(postgres: Engine, table: str, keys: Sequence[Key]) -> set[Key]:
    """The keys of `keys` that have a `_dw_versions` entry on Postgres."""
    texts = {key_text(list(k)): k for k in keys}
    found: set[Key] = set()
    names = list(texts)
    with postgres.connect() as conn:
        for i in range(0, len(names), KEYS_PER_QUERY):
            part = names[i : i + KEYS_PER_QUERY]
            rows = conn.execute(select(versions.c.pk).where(versions.c.tbl == table, versions.c.pk.in_(part)))
            found |= {texts[pk] for pk in rows.scalars()}
        conn.rollback()
    return found


def plan(tv: TableVerifier, rep: TableReport, *, unowned: bool = False) -> FixPlan:
    missing = list(rep._keys.get("missing", []))
    differing = list(rep._keys.get("differing", []))
    extras = list(rep._keys.get("extra", []))
    mine = set(differing) | set(extras) if unowned else owned(tv.p.engine, tv.table.name, differing + extras)
    out = FixPlan(tv.table.name, missing + [k for k in differing if k in mine], [k for k in extras if k in mine])
    out.unowned = [k for k in differing + extras if k not in mine]
    rep.unowned = [key_text(list(k)) for k in out.unowned[:UNOWNED_REPORTED]]
    return out


def apply(tv: TableVerifier, rep: TableReport, fix: FixPlan, postgres_apply: Engine) -> TableReport:
    """Re-apply SQLite's rows for the plan's upserts and delete its extras, through the apply rule."""
    if fix.empty:
        return rep
    with tv.s.engine.connect() as sc:
        version = read_meta(sc, "last_seq") or 0
        rows = tv.s.fetch(sc, fix.upserts)
        gone = [k for k in fix.deletes if k not in tv.s.fetch(sc, fix.deletes)] if fix.deletes else []
        sc.rollback()
    with postgres_apply.begin() as pc:
        res = apply_snapshot_rows(pc, tv.table, list(rows.values()), version)
        rep.fixed += res.applied
        rep.stale += res.stale
        if gone:
            events = [
                ChangeEvent(tv.table.name, "delete", dict(zip(tv.s.pk, k, strict=True)), None, seq=version)
                for k in gone
            ]
            dres = apply_events(pc, lambda _name: tv.table, events)
            rep.fixed += dres.applied
            rep.stale += dres.stale
    return rep


def fix_all(
    verifiers: Sequence[TableVerifier],
    report: VerifyReport,
    fix_with: Engine,
    fix_unowned: bool,
    confirm: Callable[[list[FixPlan]], object] | None,
) -> None:
    """Plan the fix of every table that differs, let `confirm` see the plans, then apply them."""
    plans: list[tuple[TableVerifier, TableReport, FixPlan]] = []
    for tv, rep in zip(verifiers, report.tables, strict=True):
        if rep.error is None and not rep.clean:
            try:
                plans.append((tv, rep, plan(tv, rep, unowned=fix_unowned)))
            except Exception as exc:
                rep.error = f"fix failed: {type(exc).__name__}: {first_line(exc)}"
    if confirm is not None and confirm([p for _tv, _rep, p in plans]) is False:
        return
    for tv, rep, planned in plans:
        try:
            apply(tv, rep, planned, fix_with)
        except Exception as exc:
            rep.error = f"fix failed: {type(exc).__name__}: {first_line(exc)}"
