"""What `next_steps` says for each failing gate condition (the gate's own result objects, as `cutover check`
and `status` build them): each remedy a command to run as printed, the check again last."""

from __future__ import annotations

from dualwrite.cli.next_steps import DAEMON, after_gate
from dualwrite.cutover.gate import Condition, GateResult


def gate(current: str, target: str, *failing: tuple[str, str]) -> GateResult:
    names = {"outbox_drained", "dead_letters_empty", "replay_lag", "backfill_complete", "verify_clean"}
    conds = [Condition(n, True, 0, "ok") for n in sorted(names - {f for f, _ in failing})]
    return GateResult(current, target, conds + [Condition(n, False, None, d) for n, d in failing])


def test_each_failing_condition_names_its_remedy() -> None:
    g = gate("shadow", "postgres_reads", ("dead_letters_empty", "2 event(s) in the dead-letter stream"))
    assert after_gate(g, " --reflect") == [
        "dualwrite backfill deadletters list",
        "dualwrite backfill deadletters redrive --reflect",
        "dualwrite cutover check --reflect",
    ]
    g = gate("shadow", "postgres_reads", ("replay_lag", "group backfill: 5000 undelivered + 0 pending event(s)"))
    assert after_gate(g)[:2] == [f"dualwrite backfill run --daemon{DAEMON}", "dualwrite backfill status"]
    g = gate("shadow", "postgres_reads", ("verify_clean", "last verify 3s ago: differences in orders, users"))
    assert after_gate(g) == [
        "dualwrite verify --tables orders,users --fix",
        "dualwrite verify --tables orders,users",
        "dualwrite cutover check",
    ]
    never = "last verify 3s ago: differences in orders; never verified: users (incremental: 4 key(s) ...)"
    assert after_gate(gate("shadow", "postgres_reads", ("verify_clean", never))) == [
        "dualwrite verify --tables orders --fix",
        "dualwrite verify --tables orders,users",  # the tables never verified with them
        "dualwrite cutover check",
    ]
    g = gate("shadow", "postgres_reads", ("verify_clean", "last verify 3s ago: never verified: users"))
    assert after_gate(g) == ["dualwrite verify --tables users", "dualwrite cutover check"]
    g = gate("shadow", "postgres_reads", ("verify_clean", "no verify recorded: run `dualwrite verify`"))
    assert after_gate(g) == ["dualwrite verify", "dualwrite cutover check"]
    g = gate("dual_write", "shadow", ("backfill_complete", "check failed: OperationalError: connection refused"))
    assert "dualwrite doctor" in after_gate(g)


def test_a_passing_or_open_gate_leads_to_the_flip_and_the_last_phase_to_nothing() -> None:
    assert after_gate(gate("shadow", "postgres_reads")) == ["dualwrite cutover flip  # to postgres_reads"]
    only_outbox = gate("shadow", "postgres_reads", ("outbox_drained", "3 unpublished event(s)"))
    assert only_outbox.open and after_gate(only_outbox) == ["dualwrite cutover flip  # to postgres_reads"]
    assert after_gate(gate("postgres", "postgres")) == []


def test_missing_bookkeeping_leads_to_init_before_anything_else() -> None:
    missing = "dualwrite's tables are missing on sqlite (app.db): _dw_meta (`dualwrite init` creates them)"
    g = gate("sqlite", "dual_write", ("bookkeeping", missing), ("replay_lag", "no replay group"))
    assert after_gate(g, " --reflect") == [
        "dualwrite init --reflect --create-tables  # ours on both sides, yours on Postgres where missing",
        "dualwrite cutover check --reflect",
    ]
    assert after_gate(g)[0].startswith("dualwrite init  #")  # no tables named: init makes only dualwrite's


def test_no_live_dualwriter_leads_to_the_status_that_shows_one() -> None:
    """No command deploys the application: the step is the status that shows its instances once it runs on
    DualWriter, then the check; init still comes first when dualwrite's tables are missing too."""
    none = "no live DualWriter instance in namespace dw (...): deploy the application on DualWriter first"
    g = gate("sqlite", "dual_write", ("writers_live", none))
    assert after_gate(g, " --reflect") == [
        "dualwrite status  # once the application runs on DualWriter: fence: N live writer instance(s)",
        "dualwrite cutover check --reflect",
    ]
    missing = "dualwrite's tables are missing on sqlite (app.db): _dw_meta (`dualwrite init` creates them)"
    g = gate("sqlite", "dual_write", ("bookkeeping", missing), ("writers_live", none))
    assert after_gate(g)[0].startswith("dualwrite init  #")
