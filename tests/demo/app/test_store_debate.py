"""Debate store on each backend alone: agents, turns numbered in order, the full ordered transcript."""

from __future__ import annotations

import pytest

from dualwrite.demo.app.debate import DebateStore
from dualwrite.demo.app.errors import DuplicateError, StateError, ValidationError


def test_transcript_is_complete_and_ordered(dw, clock) -> None:  # type: ignore[no-untyped-def]
    ds = DebateStore(dw, "acme", clock=clock)
    debate = ds.start("Is P = NP?")
    assert debate["status"] == "open" and ds.get(debate["id"]) == debate
    pro = ds.add_agent(debate["id"], "prover", role="for", model="m-large")
    con = ds.add_agent(debate["id"], "skeptic", role="against")
    assert debate["created_at"] == pro["created_at"] == clock.now  # stamped from the store's clock
    assert [a["name"] for a in ds.agents(debate["id"])] == ["prover", "skeptic"]
    lines = [(pro, "Yes."), (con, "No."), (pro, "Proof sketch..."), (con, "Counterexample..."), (con, "Also...")]
    turns = []
    for agent, text in lines:
        clock.advance(1)
        turns.append(ds.add_turn(debate["id"], agent["id"], text))
    assert [t["turn_no"] for t in turns] == [1, 2, 3, 4, 5]
    assert ds.turns(debate["id"]) == turns
    transcript = ds.transcript(debate["id"])
    assert [(t["turn_no"], t["agent"], t["role"], t["content"]) for t in transcript] == [
        (i + 1, a["name"], a["role"], text) for i, (a, text) in enumerate(lines)
    ]
    assert transcript[0]["created_at"] < transcript[-1]["created_at"]

    other = ds.start("Tabs or spaces?")
    assert ds.add_turn(other["id"], ds.add_agent(other["id"], "prover")["id"], "Tabs.")["turn_no"] == 1
    with pytest.raises(ValidationError, match=rf"agent {pro['id']} is not in debate {other['id']}"):
        ds.add_turn(other["id"], pro["id"], "wrong debate")
    with pytest.raises(DuplicateError, match=r"^debate_agents: a row with this debate_id, name already exists"):
        ds.add_agent(debate["id"], "prover")

    closed = ds.close(debate["id"])
    assert closed["status"] == "closed" and closed["closed_at"] == clock.now
    assert ds.close(debate["id"]) == closed
    with pytest.raises(StateError, match=rf"debates: debate {debate['id']} is closed; no more turns"):
        ds.add_turn(debate["id"], pro["id"], "one more thing")
    assert len(ds.transcript(debate["id"])) == 5
