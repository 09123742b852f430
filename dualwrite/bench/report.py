"""report.md, report.json and the PNG figures. Every figure carries the machine, the versions, the row
counts and its ratio to its in-run baseline (the machine is shared and noisy: absolute numbers alone
mean little); report.json lists each figure with that baseline and those ratios."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dualwrite.bench.common import machine_line  # noqa: E402
from dualwrite.bench.goals import spread_text  # noqa: E402


class Figures:
    def __init__(self, out: Path, machine: dict[str, Any]) -> None:
        self.out, self.machine = out, machine
        self.entries: list[dict[str, Any]] = []

    def save(
        self,
        fig: Any,
        name: str,
        *,
        section: str,
        title: str,
        baseline: str,
        ratios: dict[str, float | None],
        counts: str,
    ) -> None:
        shown = ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} n/a" for k, v in ratios.items())
        wrapped = textwrap.fill(f"ratio to in-run baseline ({baseline}): {shown}", 110)
        fig.suptitle(f"{title}\n{wrapped}", fontsize=8)
        fig.text(
            0.01,
            0.005,
            f"{machine_line(self.machine)}\n{counts}",
            fontsize=6,
            va="bottom",
            ha="left",
            color="#444",
        )
        fig.tight_layout(rect=(0, 0.07, 1, 0.86 - 0.03 * wrapped.count("\n")))
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        self.entries.append(
            {
                "file": path.name,
                "section": section,
                "title": title,
                "baseline": baseline,
                "ratios": ratios,
                "counts": counts,
                "machine": machine_line(self.machine),
            }
        )


# -- figures per section ----------------------------------------------------------------------------------
def fig_ops(figs: Figures, data: dict[str, Any]) -> None:
    res = data["results"]
    counts, workers = data["counts"], data["workers"]
    for op in ("insert", "read", "update"):
        fig, axes = plt.subplots(1, len(counts), figsize=(4 * len(counts), 3.8), squeeze=False)
        targets = list(dict.fromkeys(r["target"] for r in res))
        for ax, n in zip(axes[0], counts, strict=True):
            for t in targets:
                pts = [r for r in res if r["target"] == t and r["op"] == op and r["records"] == n]
                ys = [p["ratio_p99"] if p["ratio_p99"] is not None else float("nan") for p in pts]
                ax.plot([p["workers"] for p in pts], ys, marker="o", label=t)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_title(f"{n} records", fontsize=8)
            ax.set_xlabel("concurrent workers", fontsize=8)
            ax.set_xticks(workers)
            ax.set_ylabel("p99 / p99 SQLite alone", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
        biggest = [r for r in res if r["op"] == op and r["records"] == counts[-1] and r["workers"] == workers[0]]
        ratios = {r["target"]: r["ratio_p99"] for r in biggest if r["target"] != data["baseline"]}
        figs.save(
            fig,
            f"ops_{op}",
            section="ops",
            title=f"{op}: p99 latency per record, {counts[-1]} records, {workers[0]} worker(s)",
            baseline="SQLite alone, same records and workers",
            ratios=ratios,
            counts=f"records {counts}, workers {workers}",
        )


def _goal_bars(figs: Figures, name: str, section: str, title: str, data: dict[str, Any], key: str, counts: str):
    results = data["results"]
    groups = sorted({r.get(key) for r in results}, key=str)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        rs = [r for r in results if r.get(key) == g]
        labels = [r.get("variant") or r.get("mode") for r in rs]
        x = range(len(rs))
        ax.bar([i - 0.2 for i in x], [r["median_ms"] for r in rs], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rs], width=0.4, label="p99")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_title(f"{key} = {g}" if key == "writers" else f"{g} records", fontsize=8)
        goal = next((x for x in data["goals"] if x.get(key, g) == g and _ms(x) is not None), None)
        if goal is not None:
            ax.axhline(_ms(goal), color="k", lw=0.8, ls="--", label="baseline p99")
            ax.axhline(_ms(goal) * goal["goal_ratio"], color="r", lw=0.8, ls=":", label="goal")
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    goals = data["goals"]
    figs.save(
        fig,
        name,
        section=section,
        title=title,
        baseline=goals[0]["baseline"],
        ratios={g.get("label", g["name"]): g["ratio"] for g in goals},
        counts=counts,
    )


def _ms(g: dict[str, Any]) -> float | None:
    """A latency goal's baseline in ms (goals.goal() lines carry a unit; older ones baseline_ms)."""
    if "unit" in g:
        return g["baseline_value"] if g["unit"] == "ms" else None
    return g.get("baseline_ms")


def fig_copy(figs: Figures, data: dict[str, Any]) -> None:
    rs = data["results"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    names = [r["method"] for r in rs]
    a1.bar(names, [r.get("ratio") or 0 for r in rs], color=["C0" if n == "copier" else "C7" for n in names])
    a1.axhline(1.0, color="k", lw=0.8, ls="--")
    a1.set_ylabel("rows/s / pgloader rows/s", fontsize=8)
    for i, r in enumerate(rs):
        a1.text(i, (r.get("ratio") or 0), f"{r.get('rows_per_s') or 'failed'}", ha="center", va="bottom", fontsize=7)
    a2.bar(names, [r.get("peak_rss_mib") or 0 for r in rs], color="C1")
    a2.set_ylabel("peak RSS (MiB)", fontsize=8)
    for ax in (a1, a2):
        ax.tick_params(labelsize=7)
    figs.save(
        fig,
        "copy",
        section="copy",
        title="history copy: throughput and peak RSS",
        baseline="pgloader rows/s",
        ratios={r["method"]: r.get("ratio") for r in rs},
        counts=f"{data['rows']} rows, {data['bytes_per_row']} bytes/row in SQLite ({data['source_mib']} MiB)",
    )


def fig_simple(figs: Figures, name: str, section: str, data: dict[str, Any], metric: str, label: str, counts: str):
    rs = data["results"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.bar([r["method"] for r in rs], [r.get(metric) or 0 for r in rs], color=["C7", "C0"])
    ax.set_ylabel(label, fontsize=8)
    ax.tick_params(labelsize=7)
    figs.save(
        fig,
        name,
        section=section,
        title=f"{section}: {label}",
        baseline=data["baseline"],
        ratios={rs[-1]["method"]: rs[-1].get("ratio")},
        counts=counts,
    )


# -- markdown ------------------------------------------------------------------------------------------
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
    return (
        f"- {g['name']}: goal ratio {cmp} {g['goal_ratio']} x ({g['baseline']}); got {g['ratio']} x ({nums}): {verdict}"
    )


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return out


def write(out: Path, doc: dict[str, Any]) -> None:
    figs = Figures(out, doc["machine"])
    s = doc["sections"]
    if "ops" in s:
        fig_ops(figs, s["ops"])
    if "overhead" in s:
        _goal_bars(
            figs,
            "overhead",
            "overhead",
            "single-row insert: SQLite alone, Postgres alone, adapter in dual_write",
            s["overhead"],
            "writers",
            f"{s['overhead']['writes_per_variant']} writes per variant and writer count",
        )
    if "shadow" in s and "skipped" not in s["shadow"]:
        _goal_bars(
            figs,
            "shadow",
            "shadow",
            "app-visible read latency: phase sqlite vs phase shadow (100 % sampling)",
            s["shadow"],
            "records",
            f"{s['shadow']['reads_per_mode']} reads per mode over {s['shadow']['records']} records",
        )
    if "copy" in s:
        fig_copy(figs, s["copy"])
    if "replay" in s and "skipped" not in s["replay"]:
        fig_simple(figs, "replay", "replay", s["replay"], "events_per_s", "events/s", f"{s['replay']['events']} events")
    if "verify" in s and "skipped" not in s["verify"]:
        fig_simple(figs, "verify", "verify", s["verify"], "seconds", "seconds", f"{s['verify']['records']} records")
    doc["figures"] = figs.entries
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
    ]
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
            md += [_goal_line(g) + f" (p50 ratio {g['p50_ratio']})" for g in s["shadow"]["goals"]]
            md += [f"Comparisons: {s['shadow']['comparisons']}", ""]
            md += _table(s["shadow"]["results"], ["mode", "median_ms", "p95_ms", "p99_ms", "max_ms", "success_rate"])
    if "copy" in s:
        c = s["copy"]
        md += [
            "",
            "## 4. History copy",
            "",
            f"{c['rows']} rows ({c['bytes_per_row']} bytes/row, {c['source_mib']} MiB SQLite file). Each method "
            "in its own process; rows/s over the process wall time; peak RSS of that process. Baseline: pgloader.",
            "",
        ]
        md += _table(c["results"], ["method", "rows", "wall_s", "inner_s", "rows_per_s", "ratio", "peak_rss_mib"])
        errs = [f"- {r['method']}: {' / '.join(r['error'])}" for r in c["results"] if r.get("error")]
        md += ([""] + errs) if errs else []
    for key, title in (("replay", "5. Replay throughput"), ("verify", "6. Verification speed")):
        if key in s:
            md += ["", f"## {title}", ""]
            if "skipped" in s[key]:
                md.append(f"Skipped: {s[key]['skipped']}")
            else:
                md.append(f"Baseline: {s[key]['baseline']}.")
                md += [""] + _table(s[key]["results"], ["method", "events_per_s", "rows_per_s", "seconds", "ratio"])
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
            ["flips", "failed", "writes_held", "pause_p50_ms", "pause_p99_ms", "pause_max_ms", "held_max_ms"],
        )
    md += ["", "## Figures", ""]
    for f in doc["figures"]:
        ratios = ", ".join(f"{k} {v}x" for k, v in f["ratios"].items())
        md.append(f"- ![{f['title']}]({f['file']}) {f['title']}: baseline {f['baseline']}; ratios {ratios}")
    return md
