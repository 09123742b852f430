"""`dualwrite verify`, `dualwrite shadow report`, `dualwrite cutover check|flip|rollback|cancel|status`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from sqlalchemy import Table

from dualwrite.cli.main import connection_options, write_report
from dualwrite.settings import Settings, mask_text


def _registry_tables() -> list[Table]:
    from dualwrite.registry import default_registry

    return [s.table for s in default_registry().tables()]


def _writer(settings: Settings) -> Any:
    """A writer for engines, Redis and the phase; the cutover commands write no table rows."""
    from dualwrite.adapter import DualWriter, TableCatalog

    return DualWriter(settings, catalog=TableCatalog())


def _gate_options(fn: Any) -> Any:
    fn = click.option("--max-mismatch-rate", type=float, default=0.001, show_default=True)(fn)
    fn = click.option("--min-comparisons", type=int, default=0, show_default=True)(fn)
    fn = click.option("--max-replay-lag", type=int, default=1000, show_default=True)(fn)
    fn = click.option("--verify-max-age", type=float, default=None, help="seconds; an older verify fails the gate")(fn)
    return fn


def _config(max_mismatch_rate: float, min_comparisons: int, max_replay_lag: int, verify_max_age: float | None) -> Any:
    from dualwrite.cutover.gate import GateConfig

    return GateConfig(max_mismatch_rate, min_comparisons, max_replay_lag, verify_max_age)


@click.command()
@connection_options
@click.option("--tables", default="", help="comma-separated table names (default: every registered table)")
@click.option("--report", "report_path", default=None, help="write the JSON report to this file")
@click.option("--fix", is_flag=True, help="re-apply differing rows from SQLite to Postgres (apply rule)")
@click.option("--segment-rows", type=int, default=10_000, show_default=True)
@click.option("--recheck-delay", type=float, default=1.0, show_default=True, help="re-check differing keys after")
def verify(
    settings: Settings, tables: str, report_path: str | None, fix: bool, segment_rows: int, recheck_delay: float
) -> None:
    """Compare every row of SQLite and Postgres (checksums over key ranges, bisection).
    Exit 0 identical, 1 differences found, 2 error."""
    from dualwrite.verify.verifier import verify_writer

    try:
        known = {t.name: t for t in _registry_tables()}
        wanted = [n.strip() for n in tables.split(",") if n.strip()] or list(known)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            click.echo(f"error: unknown table(s): {', '.join(unknown)}; known: {', '.join(known)}", err=True)
            sys.exit(2)
        dw = _writer(settings)
        try:
            report = verify_writer(
                dw, [known[n] for n in wanted], fix=fix, segment_rows=segment_rows, recheck_delay=recheck_delay
            )
        finally:
            dw.close()
    except SystemExit:
        raise
    except Exception as exc:
        click.echo(f"error: {mask_text(str(exc).splitlines()[0] if str(exc) else repr(exc))}", err=True)
        sys.exit(2)
    for t in report.tables:
        state = "ERROR" if t.error else ("clean" if t.clean else "DIFFERENT")
        click.echo(
            f"{t.table:30} {state:9} sqlite={t.sqlite_rows} postgres={t.postgres_rows} "
            + " ".join(f"{k}={n}" for k, n in t.counts().items())
            + f" queries={t.queries} {t.seconds:.1f}s"
            + (f" fixed={t.fixed} stale={t.stale}" if fix else "")
        )
        if t.error:
            click.echo(f"  {mask_text(t.error)}")
        for kind in ("missing", "extra", "differing"):
            keys = getattr(t, kind)
            if keys:
                click.echo(f"  {kind}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
    write_report(report_path, report.to_dict())
    sys.exit(2 if report.errored else (0 if report.clean else 1))


@click.group()
def shadow() -> None:
    """Shadow reads: comparison counts and mismatch samples."""


@shadow.command("report")
@connection_options
@click.option("--limit", type=int, default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def shadow_report(settings: Settings, limit: int, as_json: bool) -> None:
    """Counts by result (and A/A noise) and the latest mismatch samples."""
    import redis

    from dualwrite.shadow.reader import read_counts, read_mismatches

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    counts = read_counts(client, settings.namespace)
    samples = read_mismatches(client, settings.namespace, limit)
    if as_json:
        click.echo(json.dumps({"counts": counts, "mismatches": samples}, indent=2))
        return
    real = {k: v for k, v in counts.items() if not k.startswith("aa:")}
    noise = {k[3:]: v for k, v in counts.items() if k.startswith("aa:")}
    compared = real.get("match", 0) + real.get("mismatch", 0)
    click.echo("comparisons: " + (", ".join(f"{k}={v}" for k, v in sorted(real.items())) or "none"))
    if compared:
        click.echo(f"mismatch rate: {real.get('mismatch', 0) / compared:.4%}")
    if noise:
        click.echo("A/A noise:   " + ", ".join(f"{k}={v}" for k, v in sorted(noise.items())))
    for s in samples:
        click.echo(f"\n{s['at']} {s['store']}/{s['query']} vs {s.get('candidate_backend', '?')} params={s['params']}")
        click.echo(s["diff"])


@shadow.command("reset")
@connection_options
def shadow_reset(settings: Settings) -> None:
    """Forget the comparison counts and mismatch samples (the gate's mismatch rate starts over)."""
    import redis

    from dualwrite.shadow.reader import counts_key, mismatches_key

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    client.delete(counts_key(settings.namespace), mismatches_key(settings.namespace))
    click.echo("shadow counts and samples cleared")


@click.group()
def cutover() -> None:
    """Check the gate, move the phase forward, roll back."""


def _print_gate(gate: Any) -> None:
    click.echo(f"gate {gate.current} -> {gate.target}: {'PASS' if gate.ok else 'FAIL'}")
    for c in gate.conditions:
        click.echo("  " + mask_text(c.line()))


@cutover.command("check")
@connection_options
@_gate_options
@click.option("--report", "report_path", default=None)
def cutover_check(settings: Settings, report_path: str | None, **cfg: Any) -> None:
    """Evaluate the gate for the next phase. Exit 0 pass, 1 fail."""
    from dualwrite.cutover.gate import check

    dw = _writer(settings)
    try:
        gate = check(dw, None, _config(**cfg))
    finally:
        dw.close()
    _print_gate(gate)
    write_report(report_path, gate.to_dict())
    sys.exit(0 if gate.ok else 1)


_HOOK_HELP = "after the change: a shell command (env DUALWRITE_FROM/_TO) or an http(s):// URL (JSON POST); repeatable"
hook_option = click.option("--hook", "hook", multiple=True, help=_HOOK_HELP)


@cutover.command("flip")
@connection_options
@_gate_options
@click.option("--force", is_flag=True, help="flip even if the gate fails (needs --reason)")
@click.option("--reason", default="")
@click.option("--postpone", is_flag=True, help="wait until the gate passes (cancel: `dualwrite cutover cancel`)")
@click.option("--deadline", type=float, default=None, help="with --postpone: give up after S seconds")
@click.option("--poll", type=float, default=2.0, show_default=True)
@hook_option
def cutover_flip(
    settings: Settings,
    force: bool,
    reason: str,
    postpone: bool,
    deadline: float | None,
    poll: float,
    hook: tuple[str, ...],
    **cfg: Any,
) -> None:
    """Move one phase forward if the gate passes. Exit 0 moved, 1 refused / cancelled / timed out."""
    from dualwrite.cutover.flip import flip, flip_postponed

    dw = _writer(settings)
    try:
        if postpone and not force:
            out = flip_postponed(
                dw, deadline=deadline, poll=poll, echo=click.echo, hook=hook, config=_config(**cfg), reason=reason
            )
        else:
            out = flip(dw, force=force, reason=reason, hook=hook, config=_config(**cfg))
    finally:
        dw.close()
    if out.gate is not None:
        _print_gate(out.gate)
    click.echo(("moved: " if out.moved else "not moved: ") + mask_text(out.message))
    if out.hook_rc not in (None, 0):
        click.echo(f"warning: hook exited {out.hook_rc}", err=True)
    sys.exit(0 if out.moved else 1)


@cutover.command("rollback")
@connection_options
@click.option("--to", "to", default=None, help="target phase (default: the last SQLite-primary, SQLite-read phase)")
@click.option("--force", is_flag=True)
@click.option("--reason", default="")
@hook_option
def cutover_rollback(settings: Settings, to: str | None, force: bool, reason: str, hook: tuple[str, ...]) -> None:
    """Return to a phase where SQLite is complete (refused when it is not, unless forced)."""
    from dualwrite.cutover.flip import rollback

    dw = _writer(settings)
    try:
        out = rollback(dw, to=to, force=force, reason=reason, hook=hook)
    finally:
        dw.close()
    click.echo("moved: " + out.message)


@cutover.command("cancel")
@connection_options
def cutover_cancel(settings: Settings) -> None:
    """Cancel a waiting `flip --postpone`."""
    import redis

    from dualwrite.cutover.flip import cancel_key

    redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).set(cancel_key(settings.namespace), 1, ex=3600)
    click.echo("cancel requested")


@cutover.command("status")
@connection_options
@_gate_options
def cutover_status(settings: Settings, **cfg: Any) -> None:
    """Phase, recent history, the gate for the next phase and the shadow counts."""
    from dualwrite.cutover.gate import check
    from dualwrite.shadow.reader import read_counts

    dw = _writer(settings)
    try:
        phase = dw.phases.current(fresh=True)
        click.echo(f"phase: {phase.name} (primary {phase.primary}, reads {phase.reads}, shadow {phase.shadow or '-'})")
        for h in dw.phases.history(5):
            click.echo(f"  {h['at']} {h['from']} -> {h['to']} by {h['by']}: {h['reason']}")
        _print_gate(check(dw, None, _config(**cfg)))
        counts = read_counts(dw.redis, settings.namespace)
        click.echo("shadow: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no comparisons"))
    finally:
        dw.close()


# `dualwrite status`: the operator's first question, one word away (the same as `cutover status`).
status = click.Command(
    "status", callback=cutover_status.callback, params=list(cutover_status.params), help=cutover_status.help
)
