"""`dualwrite cutover check|flip|rollback|cancel|status` and `dualwrite status`: the gate, the phase moves
and rollback, for the application's tables (a flip to postgres_primary moves every id sequence)."""

from __future__ import annotations

import sys
from typing import Any

import click
import redis

from dualwrite.cli import next_steps, render
from dualwrite.cli.options import (
    connection_options,
    load_tables,
    open_backends,
    phase_doc,
    phase_lines,
    retention_options,
    tables_options,
    write_report,
)
from dualwrite.cli.params import REPORT_PATH, FiniteFloat, check_report_path
from dualwrite.cli.per_source import all_sources
from dualwrite.settings import Settings, mask_text


def _gate_options(fn: Any) -> Any:
    fn = click.option("--max-mismatch-rate", type=float, default=0.001, show_default=True)(fn)
    fn = click.option(
        "--min-comparisons",
        type=int,
        default=100,
        show_default=True,
        help="shadow comparisons since the last clean verify",
    )(fn)
    fn = click.option("--max-replay-lag", type=int, default=1000, show_default=True)(fn)
    fn = click.option("--verify-max-age", type=float, default=None, help="seconds; an older verify fails the gate")(fn)
    return fn


def _config(max_mismatch_rate: float, min_comparisons: int, max_replay_lag: int, verify_max_age: float | None) -> Any:
    from dualwrite.cutover.gate import GateConfig

    return GateConfig(max_mismatch_rate, min_comparisons, max_replay_lag, verify_max_age)


@click.group()
def cutover() -> None:
    """Check the gate, move the phase forward, roll back."""


def _print_gate(gate: Any) -> None:
    verdict = "PASS" if gate.ok else "OPEN (the outbox is judged under the write fence)" if gate.open else "FAIL"
    click.echo(f"gate {gate.current} -> {gate.target}: {verdict}")
    if gate.conditions:
        rows = [["PASS" if c.ok else "FAIL", c.name, c.value, c.detail] for c in gate.conditions]
        render.table(["result", "condition", "value", "detail"], rows, left=2, text_last=True)


@cutover.command("check")
@tables_options
@connection_options
@_gate_options
@click.option("--report", "report_path", default=None, type=REPORT_PATH)
@render.json_option
def cutover_check(settings: Settings, reflect: bool, report_path: str | None, as_json: bool, **cfg: Any) -> None:
    """Evaluate the gate for the next phase, with what to run next. Exit 0 pass, 1 fail."""
    from dualwrite.cutover.gate import check

    check_report_path(report_path)
    config = _config(**cfg)
    tables = load_tables(settings, reflect)
    backends = open_backends(settings)
    try:
        gate = check(backends, tables, None, config)
    finally:
        backends.close()
    steps = next_steps.after_gate(gate, next_steps.tables_flag(reflect))
    write_report(report_path, gate.to_dict())
    if as_json:
        render.emit_json(gate.to_dict() | {"next_steps": steps})
    else:
        _print_gate(gate)
        render.next_steps(steps)
    sys.exit(0 if gate.open else 1)


def _fence_timeout(fn: Any) -> Any:
    fn = click.option(
        "--fence-attempts",
        type=click.IntRange(1, 10),
        default=3,
        show_default=True,
        help="fences raised before giving up (the writes flow for a second in between)",
    )(fn)
    return click.option(
        "--fence-timeout",
        type=float,
        default=0.5,
        show_default=True,
        envvar="DUALWRITE_FENCE_TIMEOUT",
        help="seconds: the longest a fenced flip holds the application's writes",
    )(fn)


def _check_fence_timeout(seconds: float) -> float:
    import math

    from dualwrite.errors import ConfigError

    if not math.isfinite(seconds) or not 0 < seconds <= 30:
        raise ConfigError(f"--fence-timeout {seconds}: must be a finite number of seconds above 0, at most 30")
    return seconds


def _print_outcome(out: Any, report_path: str | None = None, flag: str = "") -> None:
    """The gate, the fence, what happened, the routing now and the next step (and the --report JSON). A
    flip the gate refused is followed by what clears the gate (next_steps: init before anything), not by
    the phase's usual next move, which is that same flip."""
    from dualwrite.cutover.fenced import next_step, routing

    refused = not out.moved and out.gate is not None and not out.gate.open  # not open: a blocking condition
    steps = next_steps.after_gate(out.gate, flag) if refused else []

    for step in out.steps:
        click.echo(step)
    if out.gate is not None:
        _print_gate(out.gate)
    if out.fence is not None:
        click.echo(out.fence.line())
    prefix = "" if out.steps else ("moved: " if out.moved else "not moved: ")
    click.echo(prefix + mask_text(out.message))
    click.echo(routing(out.current))
    line = next_step(out.current, flag)
    if steps:
        render.next_steps(steps)
    else:
        click.echo(line)
    write_report(report_path, out.to_dict() | {"next": line, "next_steps": steps})


_HOOK_HELP = "after the change: a shell command (env DUALWRITE_FROM/_TO) or an http(s):// URL (JSON POST); repeatable"
hook_option = click.option("--hook", "hook", multiple=True, help=_HOOK_HELP)


@cutover.command("flip")
@tables_options
@connection_options(sqlite="answering")
@_gate_options
@_fence_timeout
@click.option("--force", is_flag=True, help="flip even if the gate fails (needs --reason)")
@click.option("--reason", default="")
@click.option("--postpone", is_flag=True, help="retry until the flip goes through (cancel: `dualwrite cutover cancel`)")
@click.option(
    "--deadline",
    type=FiniteFloat(0, 30 * 86400, min_open=True),
    default=None,
    help="with --postpone: give up after S seconds",
)
@click.option("--poll", type=FiniteFloat(0.05, 3600), default=2.0, show_default=True, help="seconds between tries")
@click.option("--dry-run", is_flag=True, help="print the steps and the gate; change nothing")
@click.option(
    "--report", "report_path", default=None, type=REPORT_PATH, help="write the outcome (gate, fence, pauses) as JSON"
)
@hook_option
def cutover_flip(
    settings: Settings,
    reflect: bool,
    force: bool,
    reason: str,
    postpone: bool,
    deadline: float | None,
    poll: float,
    dry_run: bool,
    report_path: str | None,
    fence_timeout: float,
    fence_attempts: int,
    hook: tuple[str, ...],
    **cfg: Any,
) -> None:
    """Move one phase forward if the gate passes, behind the write fence when the primary or the reads
    move. Exit 0 moved (or a dry run), 1 refused / cancelled / timed out."""
    from dualwrite.cutover.flip import flip, flip_postponed

    check_report_path(report_path)
    config = _config(**cfg)
    timeout = _check_fence_timeout(fence_timeout)
    tables = load_tables(settings, reflect)
    backends = open_backends(settings)
    try:
        if postpone and not force and not dry_run:
            out = flip_postponed(
                backends, tables, deadline=deadline, poll=poll, echo=click.echo, hook=hook, config=config,
                reason=reason, fence_timeout=timeout, fence_attempts=fence_attempts,
            )  # fmt: skip
        else:
            out = flip(
                backends, tables, force=force, reason=reason, hook=hook, config=config, fence_timeout=timeout,
                dry_run=dry_run, fence_attempts=fence_attempts,
            )  # fmt: skip
    finally:
        backends.close()
    _print_outcome(out, report_path, next_steps.tables_flag(reflect))
    if out.hook_rc not in (None, 0):
        click.echo(f"warning: hook exited {out.hook_rc}", err=True)
    sys.exit(0 if out.moved or dry_run else 1)


@cutover.command("rollback")
@tables_options
@connection_options(sqlite="answering")
@_fence_timeout
@click.option("--to", "to", default=None, help="target phase (default: the last SQLite-primary, SQLite-read phase)")
@click.option("--force", is_flag=True)
@click.option("--reason", default="")
@click.option("--report", "report_path", default=None, help="write the outcome (fence, pauses) as JSON")
@hook_option
def cutover_rollback(
    settings: Settings,
    reflect: bool,
    to: str | None,
    force: bool,
    reason: str,
    fence_timeout: float,
    fence_attempts: int,
    report_path: str | None,
    hook: tuple[str, ...],
) -> None:
    """Return to a phase where SQLite is complete (refused when it is not, unless forced), behind the
    write fence. Exit 0 moved, 1 refused."""
    from dualwrite.cutover.flip import rollback

    check_report_path(report_path)
    timeout = _check_fence_timeout(fence_timeout)
    tables = load_tables(settings, reflect)
    backends = open_backends(settings)
    try:
        out = rollback(
            backends, tables, to=to, force=force, reason=reason, hook=hook, fence_timeout=timeout,
            fence_attempts=fence_attempts,
        )  # fmt: skip
    finally:
        backends.close()
    _print_outcome(out, report_path, next_steps.tables_flag(reflect))
    sys.exit(0 if out.moved else 1)


@cutover.command("cancel")
@connection_options(sqlite="unused")
def cutover_cancel(settings: Settings) -> None:
    """Cancel a waiting `flip --postpone`."""
    from dualwrite.engines import open_redis
    from dualwrite.redis_keys import cutover_cancel_key

    client = open_redis(settings.redis_url)
    client.set(cutover_cancel_key(settings.namespace), 1, ex=3600)
    click.echo("cancel requested")


@cutover.command("status")
@tables_options
@connection_options
@retention_options
@all_sources
@_gate_options
@render.json_option
def cutover_status(settings: Settings, sources: list[Settings], reflect: bool, as_json: bool, **cfg: Any) -> None:
    """Phase, recent history, the gate for the next phase, the shadow counts, the stream and outboxes, and
    what to run next (--json: the same as one document); with a project file's sources, one row per
    selected source (phase, gate, verification freshness). Exit 1 when a phase is unknown."""
    from dualwrite.cutover.gate import check
    from dualwrite.redis_keys import read_shadow_counts
    from dualwrite.tables import Tables

    if settings.source is not None:
        from dualwrite.cli.sources_status import print_sources, source_rows

        rows = source_rows(sources, _config(**cfg))
        if as_json:
            render.emit_json({"sources": rows, "next_steps": _source_steps(rows)})
        else:
            print_sources(rows)
        sys.exit(0 if all(r["phase"] != "unknown" for r in rows) else 1)
    tables = load_tables(settings, reflect, required=False)
    backends = open_backends(settings)
    try:
        phase: dict[str, Any] = {}
        if as_json:
            phase = phase_doc(backends)
            known = phase["known"]
        else:
            lines, known = phase_lines(backends)
            for line in lines:
                click.echo(mask_text(line))
        if not known:  # no source of the phase answers: nothing below could be judged either
            if as_json:
                render.emit_json({"phase": phase, "next_steps": [f"dualwrite doctor{next_steps.tables_flag(reflect)}"]})
            sys.exit(1)
        from dualwrite.cutover.flip import read_armed

        try:
            armed = read_armed(backends.redis, settings.namespace)
        except redis.RedisError:
            armed = None  # said below, once
        if armed and not as_json:
            left = "" if armed.get("deadline_in") is None else f", {armed['deadline_in']:.0f}s left"
            click.echo(
                f"armed: flip --postpone {armed['from']} -> {armed['to']} (pid {armed['pid']}, since {armed['since']}"
                f"{left}; cancel: `dualwrite cutover cancel`): waiting for {mask_text(str(armed['waiting']))}"
            )
        fence = _fence_line(backends.redis, settings.namespace)
        if not as_json:
            click.echo(fence)
        gate = check(backends, tables if tables is not None else Tables([]), None, _config(**cfg))
        redis_error = None
        try:
            counts = read_shadow_counts(backends.redis, settings.namespace)
            bounded = _bounded_state(backends)
        except redis.RedisError as exc:  # the phase came from its record; what only Redis holds is unknown
            counts, bounded, redis_error = {}, [], f"shadow, stream: unknown (redis: {exc})"
    finally:
        backends.close()
    steps = next_steps.after_gate(gate, next_steps.tables_flag(reflect))
    if as_json:
        doc = {"phase": phase, "armed": armed, "fence": fence, "gate": gate.to_dict(), "shadow": counts}
        render.emit_json(doc | {"stream_and_outboxes": bounded, "redis_error": redis_error, "next_steps": steps})
        sys.exit(1 if redis_error else 0)
    _print_gate(gate)
    if redis_error:
        click.echo(mask_text(redis_error))
    else:
        click.echo("shadow: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no comparisons"))
        for line in bounded:
            click.echo(mask_text(line))
    render.next_steps(steps)
    sys.exit(1 if redis_error else 0)


def _source_steps(rows: list[dict[str, Any]]) -> list[str]:
    """Per source whose gate fails or phase is unknown: its own status, which names its next steps."""
    return [f"dualwrite status --source {r['source']}" for r in rows if not r.get("ok")]


def _fence_line(client: Any, namespace: str) -> str:
    """The write fence's members (the application instances a fenced flip waits for) and a standing fence."""
    import redis

    from dualwrite.fence import live_members, read_fence

    try:
        members, up = live_members(client, namespace), read_fence(client, namespace)
    except redis.RedisError as exc:
        return f"fence: unknown (redis: {exc})"
    standing = f"; a fence stands ({up.get('flip', '?')})" if up else ""
    return f"fence: {len(members)} live writer instance(s){standing}"


def _bounded_state(backends: Any) -> list[str]:
    """The stream's length and trim point, each outbox's size and retention (stream/retention.py)."""
    from datetime import timedelta

    from dualwrite.redis_keys import stream_key
    from dualwrite.stream.retention import status_lines

    s = backends.settings
    sources = [("sqlite", backends.sqlite_read), ("postgres", backends.postgres)]
    retention = timedelta(seconds=s.outbox_retention_s)
    return status_lines(backends.redis, stream_key(s.namespace), s.stream_retention, retention, sources)


# `dualwrite status`: the operator's first question, one word away (the same as `cutover status`).
status = click.Command(
    "status", callback=cutover_status.callback, params=list(cutover_status.params), help=cutover_status.help
)
