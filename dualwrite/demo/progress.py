"""Progress for the demo: rich bars on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from dualwrite.metrics import histogram_quantiles

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
