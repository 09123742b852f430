"""report.md, report.json and the PNG figures. Every figure carries the machine, the versions, the row
counts and its ratio to its in-run baseline (the machine is shared and noisy: absolute numbers alone
mean little); report.json lists each figure with that baseline and those ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualwrite.bench.common import machine_line
from dualwrite.bench.figures import Figures, draw
from dualwrite.bench.goals import spread_text
from dualwrite.bench.overhead import FLOOR


def _target_line(t: dict[str, Any] | None) -> list[str]:
    """The Track C plan's absolute target under the ops table (figures on a shared machine: read with care)."""
    if not t:
        return []
    w = t["worst"] or {}
    worst = f"worst p99 {w.get('p99_ms', 0):.3f} ms ({w.get('target')} {w.get('op')}, {w.get('records')} records, "
    worst += f"{w.get('workers')} workers)"
    verdict = "**met**" if t["all_met"] else "**not met**"
    return [
        "",
        f"- goal p99 < {t['goal_ms']:.0f} ms per operation, 100 % success: {t['met']}/{t['runs']} runs; "
        f"{worst}: {verdict}",
    ]


def _goal_line(g: dict[str, Any]) -> str:
    verdict = "**met**" if g["met"] else "**not met**"
    cmp = ">=" if g.get("higher_is_better") else "<="
    if "unit" in g:  # goals.goal(): medians of several runs and the spread of their ratios
        nums = f"{g['value']} {g['unit']} vs {g['baseline_value']} {g['unit']}; {spread_text(g)}"
    elif g.get("higher_is_better"):
        nums = f"{g['value_rows_per_s']} rows/s vs {g['baseline_rows_per_s']} rows/s"
    else:
        nums = f"{g['value_ms']:.3f} ms vs {g['baseline_ms']:.3f} ms"
    more = "".join(f"; {k.replace('_', ' ')} {g[k]}" for k in ("compared_fraction", "note") if g.get(k) is not None)
    return (
        f"- {g['name']}: goal ratio {cmp} {g['goal_ratio']} x ({g['baseline']}); got {g['ratio']} x ({nums}{more}): "
        f"{verdict}"
    )


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return out


def write(out: Path, doc: dict[str, Any], *, figures: bool = True) -> None:
    """report.json and report.md; with figures, the plots too (about 2 s of matplotlib: the partial report
    written after each section goes without them)."""
    if figures:
        figs = Figures(out, doc["machine"])
        draw(figs, doc["sections"])
        doc["figures"] = figs.entries
    doc.setdefault("figures", [])
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "report.md").write_text("\n".join(markdown(doc)) + "\n")


def markdown(doc: dict[str, Any]) -> list[str]:
    m, s = doc["machine"], doc["sections"]
    md = [
        f"# dualwrite bench ({'quick' if doc['quick'] else 'full'} run)",
        "",
        f"Run {doc['started']} - {doc['seconds']} s. Machine: {machine_line(m)}.",
        "The machine is shared and noisy: read the ratios to each section's in-run baseline, not the absolute numbers.",
        *([doc["note"]] if doc.get("note") else []),
        "",
        "## Goals",
        "",
        f"Machine: {machine_line(m)}. Each goal is the median of its runs' ratios to a baseline measured in the "
        "same run (spread: lowest-highest run); met or not met is the median against the goal. A shadow figure "
        "names the fraction of reads actually compared.",
        "",
    ]
    met = sum(1 for g in doc["goals"] if g.get("met"))
    md += [f"{met} of {len(doc['goals'])} goals met.", ""]
    for g in doc["goals"]:
        md.append(_goal_line(g))
    if "ops" in s:
        md += ["", "## 1. Store operations", "", "Baseline: SQLite alone (same op, records, workers).", ""]
        md += _table(
            s["ops"]["results"],
            [
                "target",
                "op",
                "records",
                "workers",
                "avg_ms",
                "median_ms",
                "p95_ms",
                "p99_ms",
                "max_ms",
                "success_rate",
                "ratio_median",
                "ratio_p99",
            ],
        )
        md += _target_line(s["ops"].get("target_p99"))
    if "overhead" in s:
        o = s["overhead"]
        md += ["", "## 2. Dual-write overhead", ""]
        md += [_goal_line(g) + (f" (p50 ratio {g['p50_ratio']})" if "p50_ratio" in g else "") for g in o["goals"]]
        wb = o.get("write_behind")
        if wb:
            md += [
                "",
                f"Write-behind: the replay worker had applied every write "
                f"{wb['seconds_to_applied_after_last_write']} s "
                f"after the last one (rows: SQLite {wb['rows_sqlite']}, Postgres {wb['rows_postgres']}; "
                f"{'converged' if wb['converged'] else 'NOT converged'}).",
            ]
        for f in o.get("floor", []):
            md.append(
                f"- {f.get('floor', FLOOR)}: {f.get('of', 'the design')} through the raw drivers, no framework, "
                f"{f['writers']} "
                f"writer(s): throughput {f['throughput_ratio']} x raw ({f['throughput_spread'][0]}-"
                f"{f['throughput_spread'][1]}), p99 {f['p99_ratio']} x raw ({f['p99_spread'][0]}-{f['p99_spread'][1]})"
            )
        with_parts = [g for g in o["goals"] if "breakdown" in g]
        if with_parts:
            md += [
                "",
                "Where a synchronous dual write's time goes (mean ms per write; the adapter's own histograms, which "
                "start after opening the primary; total_ms excludes open_primary_and_caller_ms):",
                "",
            ]
            md += _table(
                [dict(g["breakdown"], writers=g["writers"]) for g in with_parts],
                ["writers", "open_primary_and_caller_ms", "primary_sqlite_tx_ms", "postgres_apply_ms",
                 "after_commit_rest_ms", "total_ms"],
            )  # fmt: skip
        md += [""] + _table(
            o["results"],
            ["variant", "writers", "median_ms", "p95_ms", "p99_ms", "max_ms", "writes_per_s", "success_rate"],
        )
    if "shadow" in s:
        md += ["", "## 3. Shadow-read overhead", ""]
        if "skipped" in s["shadow"]:
            md.append(f"Skipped: {s['shadow']['skipped']}")
        else:
            md += [_goal_line(g) + f" (p50 ratio {g.get('p50_ratio')})" for g in s["shadow"]["goals"]]
            md += ["", f"Comparison results per shadow configuration: {s['shadow']['comparisons']}", ""]
            md += _table(
                s["shadow"]["results"],
                [
                    "mode",
                    "median_ms",
                    "p95_ms",
                    "p99_ms",
                    "max_ms",
                    "success_rate",
                    "compared_fraction",
                    "request_cpu_us",
                ],
            )
    if "copy" in s:
        c = s["copy"]
        md += [
            "",
            "## 4. History copy",
            "",
            f"{c['rows']} rows ({c['bytes_per_row']} bytes/row, {c['source_mib']} MiB SQLite file). Each method "
            "in its own process; rows/s over the process wall time; peak RSS of that process. Baselines: raw "
            "`COPY FROM STDIN` (psycopg 3) and pgloader, measured in the same round; `rerun` is the Copier again "
            "over its own full target (checkpoints forgotten).",
            "",
        ]
        md += [_goal_line(g) for g in c.get("goals", [])] + [""]
        md += _table(c["results"], ["method", "runs", "rows", "wall_s", "rows_per_s", "ratio", "peak_rss_mib"])
        errs = [f"- {r['method']}: {' / '.join(r['error'])}" for r in c["results"] if r.get("error")]
        md += ([""] + errs) if errs else []
    for key, title in (("replay", "5. Replay throughput"), ("verify", "6. Verification speed")):
        if key in s:
            md += ["", f"## {title}", ""]
            if "skipped" in s[key]:
                md.append(f"Skipped: {s[key]['skipped']}")
            else:
                md.append(f"Baseline: {s[key]['baseline']}.")
                md += [_goal_line(g) for g in s[key].get("goals", [])]
                md += [""] + _table(s[key]["results"], ["method", "events_per_s", "rows_per_s", "seconds", "ratio"])
                if s[key].get("per_run"):
                    md += ["", "Per run:", ""] + _table(s[key]["per_run"], list(s[key]["per_run"][0]))
                if s[key].get("lag_under_load"):
                    md += ["", f"Lag under a steady write load: {s[key]['lag_under_load']}"]
    if "fence" in s:
        f = s["fence"]
        md += ["", "## 7. Write fence pause", ""]
        md.append(
            f"{f['writers']} writer instances (fence members), {f['flips']} fenced flips shadow <-> postgres_reads, "
            f"fence timeout {f['fence_timeout_ms']:.0f} ms; a write's p99 with no fence standing: "
            f"{f['write_p99_without_fence_ms']} ms."
        )
        md += [_goal_line(g) for g in f["goals"]]
        md += [""] + _table(
            f["results"],
            [
                "flips",
                "failed",
                "writes_held",
                "pause_p50_ms",
                "pause_p99_ms",
                "pause_max_ms",
                "held_max_ms",
                "ack_max_ms",
                "catch_up_max_ms",
                "move_max_ms",
            ],
        )
    md += ["", "## Figures", ""]
    for f in doc["figures"]:
        ratios = ", ".join(f"{k} {v}x" for k, v in f["ratios"].items())
        md.append(f"- ![{f['title']}]({f['file']}) {f['title']}: baseline {f['baseline']}; ratios {ratios}")
    return md
