"""The phase of record: kept in `_dw_meta` on both databases, next to `is_primary` and `last_seq`.

Two rows, `phase` (the phase's position in phase.PHASES) and `phase_epoch` (raised by one at every change),
are written on both sides at every phase change; a change that moves the primary writes them in the
switch's own transactions (switch.py), so the side that stops being the primary says why in the same
commit. Redis holds the fast copy (`<namespace>:phase` and `:phase:epoch`) that every process reads
through its cache and that notifies a flip within a second; phase.PhaseStore falls back to this record
whenever Redis is empty (restarted), unreachable, or holds an older epoch than the process has seen, and
puts the record back into Redis. Readers take the highest epoch among the sides they can read; a process
that can read neither Redis nor any database has no phase and does not write (PhaseUnknownError).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, select, update

from dualwrite.bookkeeping import dialect_insert, has_state_table, meta
from dualwrite.errors import PhaseError, PhaseUnknownError, first_line
from dualwrite.phase import PHASES, SIDES, Record, get_phase

PHASE_ROW, EPOCH_ROW = "phase", "phase_epoch"


def read_record(conn: Connection) -> Record | None:
    """This side's record (None: none written yet, or no bookkeeping here)."""
    if not has_state_table(conn, meta.name):
        return None
    rows = dict(conn.execute(select(meta.c.name, meta.c.value).where(meta.c.name.in_([PHASE_ROW, EPOCH_ROW]))).all())
    if PHASE_ROW not in rows or EPOCH_ROW not in rows:
        return None
    index = int(rows[PHASE_ROW])
    if not 0 <= index < len(PHASES):
        raise PhaseError(f"_dw_meta holds phase number {index}, which this version does not know")
    return Record(PHASES[index].name, int(rows[EPOCH_ROW]))


def write_record(conn: Connection, record: Record) -> None:
    """Write `record` in the caller's transaction; refused if this side already holds this epoch or a
    later one (another phase change got there first)."""
    index = next(i for i, p in enumerate(PHASES) if p.name == get_phase(record.phase).name)
    ins = dialect_insert(conn, meta)
    conn.execute(ins.values(name=EPOCH_ROW, value=0).on_conflict_do_nothing(index_elements=["name"]))
    moved = conn.execute(
        update(meta).where(meta.c.name == EPOCH_ROW, meta.c.value < record.epoch).values(value=record.epoch)
    ).rowcount
    if moved != 1:
        held = conn.execute(select(meta.c.value).where(meta.c.name == EPOCH_ROW)).scalar()
        raise PhaseError(
            f"another phase change happened meanwhile (epoch {held} is recorded, this one was {record.epoch}); "
            "look at `dualwrite status` and retry"
        )
    conn.execute(
        ins.values(name=PHASE_ROW, value=index).on_conflict_do_update(index_elements=["name"], set_={"value": index})
    )


class PhaseRecord:
    """The record on both databases: `readers` and `writers` are each side's engines."""

    def __init__(self, readers: dict[str, Engine], writers: dict[str, Engine]) -> None:
        self.readers, self.writers = readers, writers

    def read_sides(self, sides: tuple[str, ...] = SIDES) -> dict[str, Record | None | str]:
        """Per side: its record, None (none yet), or the one-line reason it could not be read."""
        out: dict[str, Record | None | str] = {}
        for side in sides:
            engine = self.readers[side]
            path = engine.url.database if engine.dialect.name == "sqlite" else None
            if path and not Path(path).is_file():  # connecting would create an empty file
                out[side] = f"{path} does not exist"
                continue
            try:
                with engine.connect() as conn:
                    out[side] = read_record(conn)
                    conn.rollback()
            except Exception as exc:  # noqa: BLE001 - an unreadable side is reported, the other may do
                out[side] = first_line(exc, 200) + (f" ({path})" if path else "")
        return out

    def read(self, sides: tuple[str, ...] = SIDES) -> Record | None:
        """The newest record among the readable sides (None: no side has one yet). Raises
        PhaseUnknownError when no side can be read."""
        found = self.read_sides(sides)
        readable = [r for r in found.values() if not isinstance(r, str)]
        if not readable:
            reasons = "; ".join(f"{side}: {why}" for side, why in found.items())
            raise PhaseUnknownError(f"the phase of record cannot be read ({reasons})")
        records = [r for r in readable if r is not None]
        return max(records, key=lambda r: r.epoch) if records else None

    def write(self, record: Record, sides: tuple[str, ...] = SIDES) -> None:
        """Write `record` on every side, each in its own transaction; an error names the sides done."""
        done: list[str] = []
        for side in sides:
            try:
                with self.writers[side].begin() as conn:
                    write_record(conn, record)
            except PhaseError:
                raise
            except Exception as exc:
                written = f"recorded on {', '.join(done)} only" if done else "recorded nowhere"
                engine = self.writers[side]
                path = f" ({engine.url.database})" if engine.dialect.name == "sqlite" else ""
                raise PhaseError(
                    f"phase {record.phase} (epoch {record.epoch}) {written}: {side}{path}: {first_line(exc, 200)}; "
                    "fix it and run the same change again"
                ) from exc
            done.append(side)
