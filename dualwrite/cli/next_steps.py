"""What the operator should run next, from what a command found (Vitess and PlanetScale answer with
`next_steps`; gh-ost's most reported pain is a cut-over that waits with no word on why). Each step is a
command line to run as it is; the tables' flag (--reflect, or a --metadata given on the command line)
is carried over, the connection flags are not (set them as DUALWRITE_* variables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

# the worker that copies, relays the outbox and replays: kept running until the cutover ends
DAEMON = "  # copies what is left, then replays until stopped: keep it running"


def tables_flag(reflect: bool) -> str:
    """The flag that chose the tables of the command being run, to repeat in the next ones ('' if env)."""
    if reflect:
        return " --reflect"
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("metadata_spec") is click.core.ParameterSource.COMMANDLINE:
        return f" --metadata {ctx.params.get('metadata_spec')}"
    return ""


def init_step(flag: str) -> str:
    """`dualwrite init` as the next step where dualwrite's tables are missing (with the application's tables
    named: theirs on Postgres where missing too)."""
    if not flag:
        return "dualwrite init  # dualwrite's own tables on both sides"
    return f"dualwrite init{flag} --create-tables  # ours on both sides, yours on Postgres where missing"


def _tables(names: Sequence[str]) -> str:
    return f" --tables {','.join(names)}" if names else ""


def after_gate(gate: Any, flag: str = "") -> list[str]:
    """A gate result (cutover check / status): the flip when it passes, otherwise what clears each failing
    condition, in the order they are best cleared (copy, replay, verify, then shadow)."""
    if gate.current == gate.target:
        return []  # the last phase: nothing comes next
    if gate.ok or getattr(gate, "open", False):  # open: only the outbox lags, which the flip's fence drains
        return [f"dualwrite cutover flip{flag}  # to {gate.target}"]
    failing = {c.name: c for c in gate.failing}
    if "bookkeeping" in failing:  # nothing else can be judged or done before dualwrite's tables exist
        return [init_step(flag), f"dualwrite cutover check{flag}"]
    steps: list[str] = []
    if "writers_live" in failing:  # no command clears it: the application's deploy on DualWriter does
        steps.append("dualwrite status  # once the application runs on DualWriter: fence: N live writer instance(s)")
    copy = "backfill_complete" in failing
    if copy:
        detail = failing["backfill_complete"].detail
        if detail.startswith("no captured tables"):  # the gate cannot judge the copy without the tables
            return ["dualwrite cutover check --metadata module:attr  # or --reflect: which tables are captured"]
        steps.append(f"dualwrite backfill run{flag}{_tables(_not_done(detail))} --daemon{DAEMON}")
    if "outbox_drained" in failing or "replay_lag" in failing:
        if not copy:  # the daemon above replays too
            steps.append(f"dualwrite backfill run{flag} --daemon{DAEMON}")
        steps.append(f"dualwrite backfill status{flag}")
    if "dead_letters_empty" in failing:
        steps += ["dualwrite backfill deadletters list", f"dualwrite backfill deadletters redrive{flag}"]
    if "verify_clean" in failing:
        detail = failing["verify_clean"].detail
        bad = _differing(detail)
        if bad:
            steps.append(f"dualwrite verify{flag}{_tables(bad)} --fix")
        steps.append(f"dualwrite verify{flag}{_tables(bad + _named(detail, 'never verified: '))}")
    if "shadow_mismatch_rate" in failing:
        steps.append("dualwrite shadow report")
    for name in failing:
        if failing[name].detail.startswith("check failed"):
            steps.append(f"dualwrite doctor{flag}")
            break
    steps.append(f"dualwrite cutover check{flag}")
    return steps


def _not_done(detail: str) -> list[str]:
    """The tables named by backfill_complete's detail ('not done: a, b (1 never copied)')."""
    if not detail.startswith("not done: "):
        return []
    return [t.strip() for t in detail[len("not done: ") :].split(" (")[0].split(",") if t.strip()]


def _differing(detail: str) -> list[str]:
    """The tables named by verify_clean's detail ('... differences in a, b')."""
    return [] if "fixed rows" in detail else _named(detail, "differences in ")


def _named(detail: str, marker: str) -> list[str]:
    """The tables verify_clean's detail lists after `marker` ('differences in a, b; never verified: c (...)')."""
    if marker not in detail:
        return []
    names = detail.split(marker, 1)[1].split(" (")[0].split(";")[0]
    return [t.strip() for t in names.split(",") if t.strip()]


def after_verify(report: Any, flag: str = "", fixed: bool = False) -> list[str]:
    """A verify run: the gate when clean; the fix (or, after a fix, a re-verify) for the tables that differ."""
    errored = [t.table for t in report.tables if t.error]
    different = [t.table for t in report.tables if not t.error and not t.clean]
    steps: list[str] = []
    if errored:
        steps.append(f"dualwrite doctor{flag}")
        steps.append(f"dualwrite verify{flag}{_tables(errored)}")
    if different:
        if not fixed:
            steps.append(f"dualwrite verify{flag}{_tables(different)} --fix")
        steps.append(f"dualwrite verify{flag}{_tables(different)}")
    if fixed and not different and not errored and any(t.fixed for t in report.tables):
        steps.append(f"dualwrite verify{flag}{_tables([t.table for t in report.tables if t.fixed])}")
    if not steps:
        steps.append(f"dualwrite cutover check{flag}")
    return steps


def after_backfill_status(rows: Sequence[Any], workers: Sequence[Any], flag: str = "") -> list[str]:
    """Per-table copy states: resume or start what is not done (when no worker runs), then verify."""
    pending = [r.table for r in rows if r.state != "done"]
    steps: list[str] = []
    if pending and not workers:
        steps.append(f"dualwrite backfill run{flag}{_tables(pending)} --daemon{DAEMON}")
    elif pending:
        steps.append(f"dualwrite backfill status{flag}  # {len(workers)} worker(s) copying; ask again later")
    if not pending:
        steps.append(f"dualwrite verify{flag}{_tables([r.table for r in rows])}")
    return steps
