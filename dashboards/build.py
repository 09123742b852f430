"""Generate the Grafana dashboards from code: `python -m dashboards.build` (or `--check` in CI).

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39) built from panels.py's helpers, one
module per dashboard (overview.py, latency.py, backfill.py), each linted by lint.check(). Metric names are
those of dualwrite/metrics.py. (grafana-foundation-sdk was considered: its builders would replace these
few helpers with more code and a dependency, and the linter and the live Prometheus proof would stay, so
plain dicts remain.)

Committed output lives in dashboards/grafana/*.json; tests assert it equals what this module generates.
"""

from __future__ import annotations

import argparse
import json
import sys

from dashboards.backfill import backfill
from dashboards.latency import latency
from dashboards.lint import check
from dashboards.overview import overview
from dashboards.panels import OUT_DIR, UNITS

__all__ = ["DASHBOARDS", "OUT_DIR", "UNITS", "backfill", "check", "latency", "main", "overview", "render"]

DASHBOARDS = {"overview": overview, "latency": latency, "backfill": backfill}


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": json.dumps(fn(), indent=2, sort_keys=True) + "\n" for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed JSON differs or lints fail")
    args = ap.parse_args(argv)
    bad = [f"{name}: {p}" for name, fn in DASHBOARDS.items() for p in check(fn())]
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                bad.append(f"{path} is stale: run python -m dashboards.build")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
