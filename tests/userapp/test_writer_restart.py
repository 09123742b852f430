"""A writer restarted under its name goes on from its own log without drawing its first run's values
again: its UUID order keys come from its random stream (not from its counter, which the log moves on),
so a stream started over hands out the UUIDs of its own earlier orders, and the insert fails on the
primary key (seen as `UNIQUE constraint failed: orders.id` in tests/userapp/test_skipped_init.py, after its
plain writers came back on the adapter). On the application's own engine (plain.py), a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from tests.userapp.models import Base
from tests.userapp.plain import PlainApp, plain_engine
from tests.userapp.writer import Stats, Writer

DRAWS = 50


def draws(db: Path, log: Path, transactions: int) -> list[int]:
    """Run a writer on `log` for `transactions`; the first 128-bit values its stream gave at the start."""
    app = PlainApp(str(db))
    writer = Writer(app, "main-w1", 1, log, Stats(None, "main-w1"), rate=0, population=10, documents=0)
    state = writer.work.v.r.getstate()
    first = [writer.work.v.r.getrandbits(128) for _ in range(DRAWS)]
    writer.work.v.r.setstate(state)
    try:
        writer.run(max_tx=transactions)
    finally:
        writer.close()
        app.close()
    assert writer.stats.doc["errors"] == 0, writer.stats.doc["error_samples"]
    return first


def test_a_restarted_writer_does_not_draw_its_first_runs_values_again(tmp_path: Path) -> None:
    db, log = tmp_path / "app.db", tmp_path / "main-w1.jsonl"
    engine = plain_engine(str(db))
    Base.metadata.create_all(engine)
    engine.dispose()
    first = draws(db, log, 30)
    again = draws(db, log, 30)  # before: the same seed, so the very same values
    assert not set(first) & set(again)
