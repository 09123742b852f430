"""`dualwrite backfill deadletters list|redrive`: the events the replayer could not apply, and applying
them again once the cause is fixed (an id that names no dead letter is refused, not silently skipped)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from dualwrite.cli.options import connection_options, load_tables, open_backends, tables_options
from dualwrite.cli.params import Count
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings

if TYPE_CHECKING:
    from dualwrite.engines import Backends


@click.group()
def deadletters() -> None:
    """Inspect and re-drive the dead-letter stream."""


@deadletters.command("list")
@connection_options(sqlite="unused")
@click.option("--count", default=100, show_default=True, type=Count(1, 100_000), help="at most this many")
def list_cmd(settings: Settings, count: int) -> None:

    from dualwrite.engines import open_redis
    from dualwrite.stream.replay import list_dead_letters

    client = open_redis(settings.redis_url)
    for row in list_dead_letters(client, settings.namespace, count):
        click.echo(f"{row['dead_id']} id={row.get('id')} reason={row.get('reason')} error={row.get('error', '')[:200]}")


STREAM_ID = re.compile(r"^\d+-\d+$")


def _known_dead_letters(backends: Backends, ids: tuple[str, ...]) -> None:
    """Refuse an id that is not a stream id, or that names no dead letter (a typo would re-drive nothing)."""
    from dualwrite.redis_keys import dead_letter_key

    bad = [i for i in ids if not STREAM_ID.match(i)]
    if bad:
        raise ConfigError(f"{', '.join(map(repr, bad))}: not a dead-letter id (MS-N, as `deadletters list` shows)")
    key = dead_letter_key(backends.settings.namespace)
    missing = [i for i in ids if not backends.redis.xrange(key, i, i)]
    if missing:
        raise ConfigError(
            f"no dead letter {', '.join(map(repr, missing))} in namespace {backends.settings.namespace!r}"
            " (see `dualwrite backfill deadletters list`)"
        )


@deadletters.command("redrive")
@tables_options
@connection_options
@click.argument("ids", nargs=-1)
def redrive_cmd(settings: Settings, reflect: bool, ids: tuple[str, ...]) -> None:
    """Apply dead letters (all, or the given dead-letter ids) and delete those that succeed."""
    from dualwrite.stream.replay import redrive

    tables = load_tables(settings, reflect)
    backends = open_backends(settings)
    try:
        _known_dead_letters(backends, ids)
        counts = redrive(backends, tables, list(ids) or None)
    finally:
        backends.close()
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
