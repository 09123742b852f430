"""Progress for the demo: rich bars on a terminal, plain log lines otherwise, and the write/read latency
quantiles its summary prints (read from the metrics registry)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("demo")


class Progress:
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True)

    def line(self, message: str) -> None:
        if self.tty:
            self.console.print(f"[bold]•[/bold] {message}")
        else:
            log.info(message)

    @contextmanager
    def bar(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.tty:
            with RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
            ) as prog:
                task = prog.add_task(label, total=total)
                yield lambda n: prog.advance(task, n)
            return
        state = {"done": 0, "next": 0.0}

        def advance(n: int) -> None:
            state["done"] += n
            if state["done"] >= state["next"] * total:
                log.info("%s: %d/%d (%.0f%%)", label, state["done"], total, 100 * state["done"] / max(total, 1))
                state["next"] += 0.25

        yield advance
        log.info("%s: done (%d)", label, state["done"])

    @staticmethod
    def latency_table() -> dict[str, dict[str, dict[str, float]]]:
        def ms(d: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
            return {
                k: {q: (round(v * 1000, 3) if q != "count" else int(v)) for q, v in row.items()} for k, row in d.items()
            }

        return {
            "write": ms(histogram_quantiles("dualwrite_write_duration_seconds", "backend")),
            "read": ms(histogram_quantiles("dualwrite_read_duration_seconds", "backend")),
        }


def histogram_quantiles(name: str, by: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, dict[str, float]]:
    """Quantiles (in seconds) of a histogram in the default registry, summed over every label but `by`,
    interpolated within buckets the way Prometheus' histogram_quantile does."""
    buckets: dict[str, dict[float, float]] = {}
    for metric in REGISTRY.collect():
        if metric.name != name:
            continue
        for s in metric.samples:
            if s.name == f"{name}_bucket":
                le = float(s.labels["le"])
                group = buckets.setdefault(s.labels.get(by, ""), {})
                group[le] = group.get(le, 0.0) + s.value
    out: dict[str, dict[str, float]] = {}
    for key, cum in buckets.items():
        bounds = sorted(cum)
        total = cum[bounds[-1]] if bounds else 0.0
        if not total:
            continue
        res: dict[str, float] = {"count": total}
        for q in qs:
            rank, prev_b, prev_c = q * total, 0.0, 0.0
            for b in bounds:
                if cum[b] >= rank:
                    if b == float("inf"):
                        res[f"p{int(q * 100)}"] = prev_b
                    else:
                        frac = (rank - prev_c) / (cum[b] - prev_c) if cum[b] > prev_c else 1.0
                        res[f"p{int(q * 100)}"] = prev_b + (b - prev_b) * frac
                    break
                prev_b, prev_c = b, cum[b]
        out[key] = res
    return out
