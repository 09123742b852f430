"""The reject file: a reject counts only once its line is written; a failed write stops the chunk (rolled
back, so the row is met again on the next run) instead of being counted as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.rejects import RejectWriter
from tests.backfill.support import notes, seed

FULL = Path("/dev/full")  # every write fails with ENOSPC


def rejected_metric(table: str) -> float:
    return REGISTRY.get_sample_value("dualwrite_backfill_rejected_rows_total", {"table": table}) or 0.0


def test_count_only_after_the_line_is_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = rejected_metric("rj_t")
    (tmp_path / "a-file").write_text("")
    impossible = RejectWriter(tmp_path / "a-file" / "r.jsonl")  # its folder cannot be made: a file is there
    with pytest.raises(OSError):
        impossible.reject("rj_t", "[1]", {"id": 1}, ValueError("bad"))
    assert impossible.count == 0 and rejected_metric("rj_t") == before
    assert not (tmp_path / "later").exists()  # the folder is made with the first line, not before
    later = RejectWriter(tmp_path / "later" / "r.jsonl")
    later.reject("rj_t", "[2]", {"id": 2}, ValueError("bad"))
    assert later.count == 1 and len((tmp_path / "later" / "r.jsonl").read_text().splitlines()) == 1
    before = rejected_metric("rj_t")
    if FULL.exists():
        full = RejectWriter(FULL)
        with pytest.raises(OSError):
            full.reject("rj_t", "[1]", {"id": 1}, ValueError("bad"))
        assert full.count == 0 and rejected_metric("rj_t") == before
    good = RejectWriter(tmp_path / "r.jsonl")
    good.reject("rj_t", '["\udc80"]', {"id": 1, "s": "a\x00b"}, ValueError("NUL\nsecond line"))
    (line,) = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    rec = json.loads(line)
    assert good.count == 1 and rejected_metric("rj_t") == before + 1
    assert rec["column"] == "s" and rec["reason"] == "NUL"
    assert rec["key"] == '["\udc80"]'  # the key as given, lone surrogate included




@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_unwritable_reject_file_stops_the_chunk_and_the_next_run_rejects_it(dw, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 30)
    with dw.backends.sqlite.begin() as conn:
        conn.execute(update(notes).where(notes.c.id == 17).values(body="bad\x00"))
    full = RejectWriter(FULL)
    with pytest.raises(OSError):
        Copier.for_backends(dw.backends, chunk_size=10, rejects=full).copy_tables([notes])
    cp = ckpt.load_all(dw.backends.postgres)["bf_notes"]
    assert full.count == 0 and (cp.rows_copied, cp.rows_rejected) == (10, 0)  # the refused chunk rolled back
    path = tmp_path / "r.jsonl"
    (rep,) = Copier.for_backends(dw.backends, chunk_size=10, rejects=RejectWriter(path)).copy_tables([notes])
    assert (rep.rows_copied, rep.rows_rejected, rep.status) == (29, 1, "done")
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["[17]"]
