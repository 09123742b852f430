"""The figures of the bench report: one PNG per section (at least its goals against their targets), each
carrying the machine, the commit, the counts and its ratios to the in-run baseline."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dualwrite.bench.common import machine_line  # noqa: E402


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


def fig_goals(figs: Figures, section: str, data: dict[str, Any], counts: str) -> None:
    """Every goal of a section: the median ratio with its spread (min-max over the runs) against the target."""
    goals = [g for g in data.get("goals", []) if g.get("ratio") is not None]
    if not goals:
        return
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(goals)), 5.0))
    xs = list(range(len(goals)))
    for i, g in enumerate(goals):
        lo, hi = g.get("spread") or (g["ratio"], g["ratio"])
        ax.bar(i, g["ratio"], color="C2" if g["met"] else "C3", width=0.6)
        ax.errorbar(i, g["ratio"], yerr=[[g["ratio"] - lo], [hi - g["ratio"]]], color="k", capsize=4, lw=0.8)
        ax.hlines(g["goal_ratio"], i - 0.4, i + 0.4, color="k", ls="--", lw=1)
    ax.set_xticks(xs, [textwrap.fill(f"#{i + 1} {g['name']}", 24) for i, g in enumerate(goals)], fontsize=6)
    ax.set_ylabel("ratio to the in-run baseline (dashed: goal)", fontsize=8)
    ax.tick_params(labelsize=7)
    figs.save(
        fig,
        f"{section}_goals",
        section=section,
        title=f"{section}: goals (green met, red not met; bars: median, whiskers: spread over the runs)",
        baseline="; ".join(dict.fromkeys(g["baseline"] for g in goals)),
        ratios={f"#{i + 1}": g["ratio"] for i, g in enumerate(goals)},
        counts=counts,
    )


def fig_bars(figs: Figures, section: str, data: dict[str, Any], key: str, label: str, counts: str) -> None:
    """p50 and p99 of each variant (`key` names it in the section's results), grouped by writer count."""
    res = data.get("results", [])
    groups = sorted({r.get("writers", 0) for r in res})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.8), squeeze=False)
    for ax, w in zip(axes[0], groups, strict=True):
        rs = [r for r in res if r.get("writers", 0) == w]
        x = range(len(rs))
        ax.bar([i - 0.2 for i in x], [r["median_ms"] for r in rs], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rs], width=0.4, label="p99")
        ax.set_xticks(list(x), [textwrap.fill(str(r[key]), 14) for r in rs], fontsize=7)
        ax.set_ylabel("ms", fontsize=8)
        ax.set_title(f"{w} writer(s)" if w else label, fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    goals = data.get("goals", [])
    figs.save(
        fig,
        section,
        section=section,
        title=label,
        baseline=goals[0]["baseline"] if goals else "-",
        ratios={g["name"]: g["ratio"] for g in goals},
        counts=counts,
    )


def draw(figs: Figures, sections: dict[str, Any]) -> None:
    """A figure for each section that ran (its own, if it has one) and one of its goals."""
    s = sections
    done = lambda name: name in s and "skipped" not in s[name]  # noqa: E731
    if done("ops"):
        fig_ops(figs, s["ops"])
    if done("overhead"):
        o = s["overhead"]
        counts = f"{o['writes_per_variant']} writes per variant and writer count, {o.get('runs', 1)} rounds"
        fig_bars(figs, "overhead", o, "variant", "single-row insert: raw drivers vs the adapter", counts)
    if done("shadow"):
        sh = s["shadow"]
        counts = f"{sh['reads_per_mode']} reads per mode over {sh['records']} records"
        fig_bars(figs, "shadow", sh, "mode", "app-visible read latency: phase sqlite vs phase shadow", counts)
    if done("copy"):
        fig_copy(figs, s["copy"])
    if done("replay"):
        fig_simple(figs, "replay", "replay", s["replay"], "events_per_s", "events/s", f"{s['replay']['events']} events")
    if done("verify"):
        fig_simple(figs, "verify", "verify", s["verify"], "seconds", "seconds", f"{s['verify'].get('records')} records")
    for name, data in s.items():
        if isinstance(data, dict) and "skipped" not in data:
            fig_goals(figs, name, data, _counts(name, data))


def _counts(name: str, data: dict[str, Any]) -> str:
    keys = ("events", "rows", "records", "reads_per_mode", "writes_per_variant", "runs", "blocks")
    shown = ", ".join(f"{k} {data[k]}" for k in keys if k in data)
    return f"section {name}: {shown}" if shown else f"section {name}"
