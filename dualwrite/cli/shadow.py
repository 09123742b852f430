"""`dualwrite shadow report|reset`: the shadow readers' comparison counts and mismatch samples."""

from __future__ import annotations

import json

import click

from dualwrite.cli.options import connection_options
from dualwrite.cli.params import Count
from dualwrite.settings import Settings


@click.group()
def shadow() -> None:
    """Shadow reads: comparison counts and mismatch samples."""


@shadow.command("report")
@connection_options(sqlite="unused")
@click.option("--limit", type=Count(1, 10_000), default=10, show_default=True, help="mismatch samples shown")
@click.option("--json", "as_json", is_flag=True)
def shadow_report(settings: Settings, limit: int, as_json: bool) -> None:
    """Counts by result (and A/A noise) and the latest mismatch samples."""
    from dualwrite.engines import open_redis
    from dualwrite.redis_keys import read_shadow_counts
    from dualwrite.shadow.records import read_mismatches

    client = open_redis(settings.redis_url)
    counts = read_shadow_counts(client, settings.namespace)
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
        for line in filter(None, s.get("rows", "").splitlines()):
            click.echo(f"  differs: {line}")
        click.echo(s["diff"])


@shadow.command("reset")
@connection_options(sqlite="unused")
def shadow_reset(settings: Settings) -> None:
    """Forget the comparison counts and mismatch samples (the gate's mismatch rate starts over)."""
    from dualwrite.engines import open_redis
    from dualwrite.redis_keys import shadow_counts_key, shadow_mismatches_key

    client = open_redis(settings.redis_url)
    client.delete(shadow_counts_key(settings.namespace), shadow_mismatches_key(settings.namespace))
    click.echo("shadow counts and samples cleared")
