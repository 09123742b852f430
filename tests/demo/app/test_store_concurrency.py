"""Concurrent writers on each backend: turn numbers stay gapless and unique, a contested handle or hash
goes to exactly one writer (the others get DuplicateError), concurrent upserts of one key never fail."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dualwrite.demo.app.debate import DebateStore
from dualwrite.demo.app.errors import DuplicateError
from dualwrite.demo.app.ingest import IngestStore
from dualwrite.demo.app.memory import MemoryStore
from dualwrite.demo.app.profiles import ProfileStore

THREADS = 6


def _run(fn: Any, n: int) -> list[Any]:
    def guarded(i: int) -> Any:
        try:
            return fn(i)
        except DuplicateError as exc:
            return exc

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(guarded, range(n)))


def test_concurrent_turns_are_numbered_without_gaps(dw) -> None:  # type: ignore[no-untyped-def]
    ds = DebateStore(dw, "acme")
    debate = ds.start("race")
    agents = [ds.add_agent(debate["id"], f"a{i}") for i in range(3)]
    turns = _run(lambda i: ds.add_turn(debate["id"], agents[i % 3]["id"], f"turn {i}"), 30)
    assert sorted(t["turn_no"] for t in turns) == list(range(1, 31))
    assert [t["turn_no"] for t in ds.transcript(debate["id"])] == list(range(1, 31))


def test_contested_unique_values_go_to_one_writer(dw) -> None:  # type: ignore[no-untyped-def]
    ps = ProfileStore(dw, "acme")
    results = _run(lambda i: ps.create("same-handle", bio=str(i)), 12)
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, DuplicateError) for r in results if not isinstance(r, dict))
    ing = IngestStore(dw, "acme")
    job = ing.start_job("src")
    docs = _run(lambda i: ing.add_document(job["id"], "same content"), 12)
    assert sum(isinstance(d, dict) for d in docs) == 1
    assert ing.get_job(job["id"])["documents_total"] == 1  # type: ignore[index]


def test_concurrent_upserts_of_one_key(dw) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme")
    rows = _run(lambda i: mem.put("ns", "hot", f"v{i}"), 24)
    assert all(isinstance(r, dict) for r in rows)
    assert len({r["id"] for r in rows}) == 1
    final = mem.get("ns", "hot")
    assert final is not None and final["content"] in {f"v{i}" for i in range(24)}
