"""`dualwrite demo`: the project's main job."""

from __future__ import annotations

import json
import sys
import uuid

import click

from dualwrite.cli.options import connection_options, retention_options, write_report
from dualwrite.settings import Settings, mask_text


@click.command()
@connection_options(sqlite="create")
@retention_options
@click.option("--rows", default=200_000, show_default=True, envvar="DUALWRITE_DEMO_ROWS", help="history rows to seed")
@click.option("--duration", default=30.0, show_default=True, help="seconds of traffic across the phases")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None, help="serve /metrics, /health")
@click.option(
    "--metrics-host", envvar="DUALWRITE_METRICS_HOST", default=None, help="address of /metrics (default 127.0.0.1)"
)
@click.option("--report", "report_path", default=None, help="write the final report as JSON")
@click.option(
    "--multi-source",
    "multi_source",
    default=None,
    metavar="DIR",
    help="write the example application as one seeded SQLite file per store and a dualwrite.toml declaring "
    "them (P0 memory, profiles, ingest; P1 graph, analytics, debate; P2 marketplace, archive), then stop",
)
def demo(
    settings: Settings,
    multi_source: str | None,
    rows: int,
    duration: float,
    metrics_port: int | None,
    metrics_host: str | None,
    report_path: str | None,
) -> None:
    """Run a whole SQLite -> Postgres cutover under live traffic and print the report."""
    import tempfile
    from pathlib import Path

    from dualwrite.demo.embedded import EmbeddedServers
    from dualwrite.demo.run import Demo

    if multi_source:
        from dualwrite.demo.multi import write_stores

        schema = settings.pg_schema if "pg_schema" in settings.origins else "dualwrite_demo"
        path = write_stores(Path(multi_source), settings, rows=rows, schema=schema)
        click.echo(f"wrote {path} and one SQLite file per store beside it; next, in {path.parent}:")
        for step in ("dualwrite init --create-tables", "dualwrite migrate --priority P0 --dry-run", "dualwrite status"):
            click.echo(f"  {step}")
        return
    if "sqlite_url" not in settings.origins:
        settings = settings.with_(sqlite_url=f"sqlite:///{Path(tempfile.mkdtemp(prefix='dualwrite-app-')) / 'app.db'}")
    if "namespace" not in settings.origins:
        settings = settings.with_(namespace=f"demo-{uuid.uuid4().hex[:8]}")
    if "pg_schema" not in settings.origins:
        settings = settings.with_(pg_schema="dualwrite_demo")
    if "state_schema" not in settings.origins:  # the demo's own bookkeeping, beside its own tables
        settings = settings.with_(state_schema=f"{settings.pg_schema}_dw")
    with EmbeddedServers(settings) as servers:
        for what in servers.started:
            click.echo(f"no server answered; started {what}", err=True)
        result = Demo(
            servers.settings, rows=rows, duration=duration, metrics_port=metrics_port, metrics_host=metrics_host
        ).run()
    report = {"ok": result.ok, "phases": result.phases, "checks": result.checks, "figures": result.figures}
    write_report(report_path, report)
    click.echo(mask_text(render(report)))
    sys.exit(0 if result.ok else 1)


def render(report: dict) -> str:  # type: ignore[type-arg]
    lines = ["", "== dualwrite demo report =="]
    lines += [f"  {p['at']}  {p['phase']:17} {p['why']}" for p in report["phases"]]
    lines.append("checks:")
    lines += [f"  [{'ok' if v else 'FAIL'}] {k}" for k, v in report["checks"].items()]
    figs = dict(report["figures"])
    lat = figs.pop("latency_ms", {})
    lines.append("latency (ms):")
    for kind, rows in lat.items():
        for backend, q in sorted(rows.items()):
            lines.append(
                f"  {kind:5} {backend:9} p50 {q.get('p50', 0):8.3f}  p95 {q.get('p95', 0):8.3f}  "
                f"p99 {q.get('p99', 0):8.3f}  (n={q.get('count', 0)})"
            )
    lines.append("figures:")
    lines += [f"  {k}: {json.dumps(v, default=str)}" for k, v in figs.items()]
    lines.append(f"result: {'OK - no row lost or different' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)
