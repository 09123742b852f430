"""How the operator's commands print, in one place: `--json` (one JSON document on one line of stdout,
with `next_steps`), `rich` tables on a terminal, plain lines otherwise (a pipe, a log file, systemd). Progress
goes to stderr, so stdout stays the result in every mode.

Plain tables size their columns from their content (a timestamp never overflows a column); rich tables
do the same and fold long cells to the terminal's width.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from dualwrite.settings import mask_text

json_option = click.option(
    "--json", "as_json", is_flag=True, help="print one JSON document (with next_steps) instead of text"
)


def on_terminal() -> bool:
    return sys.stdout.isatty()


def emit_json(doc: dict[str, Any]) -> None:
    """The document on stdout as one line (a command run per source of a project file prints one line
    each: JSON Lines), passwords masked (every value goes through the same masking as text)."""
    click.echo(mask_text(json.dumps(doc, default=str)))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None, left: int = 1,
    text_last: bool = False,
) -> None:
    """A table: rich on a terminal, aligned plain lines otherwise. The first `left` columns are
    left-aligned (names), the rest right-aligned (figures); with `text_last` the last one is free text
    (left-aligned)."""
    texts = [[mask_text(cell(v)) for v in row] for row in rows]
    if on_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if _left(i, len(columns), left, text_last) else "right")
        for row in texts:
            t.add_row(*row)
        Console().print(t)
        return
    for line in plain_table(columns, texts, title=title, left=left, text_last=text_last):
        click.echo(line)


def _left(i: int, n: int, left: int, text_last: bool) -> bool:
    return i < left or (text_last and i == n - 1)


def plain_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None, left: int = 1,
    text_last: bool = False,
) -> list[str]:
    """Aligned lines, each column as wide as its widest cell, two spaces apart."""
    n = len(columns)
    widths = [max([len(str(c)), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if _left(i, n, left, text_last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return ([title] if title else []) + [line(columns)] + [line(r) for r in rows]


def next_steps(steps: Sequence[str]) -> None:
    """What to run next, after the result (the same list as the JSON document's next_steps)."""
    if steps:
        click.echo("next:")
        for step in steps:
            click.echo(f"  {step}")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Progress of one unit of work at a time (a table being verified) on stderr: a rich bar on a terminal,
    otherwise a line at most every `every_s` seconds and when the unit ends, with the ETA from the rate so far."""

    def __init__(self, verb: str, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.verb, self.every_s, self.clock = verb, every_s, clock
        self._bar: Any = None
        self._task: Any = None
        self._unit = ""
        self._started = self._last = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bars

            self._bar = Bars(
                TextColumn("{task.description:30}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar off the terminal while a question is asked there (rich would redraw over it)."""
        if self._bar is None:
            yield
            return
        self._bar.stop()
        try:
            yield
        finally:
            self._bar.start()

    def update(self, unit: str, done: int, total: int) -> None:
        """`done` of `total` steps of `unit` (verify: both databases' checksums of its key ranges); called
        from the threads that do the work."""
        with self._lock:
            self._update(unit, done, total)

    def _update(self, unit: str, done: int, total: int) -> None:
        now = self.clock()
        if unit != self._unit:
            self._unit, self._started, self._last = unit, now, float("-inf")
            if self._bar is not None:
                self._task = self._bar.add_task(f"{self.verb} {unit}", total=max(total, 1))
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=max(total, done, 1))
            return
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self._started
        eta = elapsed / done * (total - done) if done and total > done else (0.0 if done >= total else None)
        pct = 100.0 * done / total if total else 100.0
        click.echo(
            f"{self.verb} {unit}: {done}/{total} ({pct:.0f}%), {duration(elapsed)} elapsed, ETA {duration(eta)}",
            err=True,
        )
