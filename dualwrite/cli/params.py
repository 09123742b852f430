"""How every command checks its flag values, before any work: the click parameter types (finite numbers in
a range, counts, ports, writable report files), the --metrics-port probe, the comma-separated lists, and
the options several commands share (--max-rejects).

A bad value fails at parse time with a one-line usage error (exit 2) that names the flag.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dualwrite.errors import ConfigError


def check_report_path(path: str | None, flag: str = "--report") -> None:
    """Fail before any work when a --report file could not be written (see `writable_file`)."""
    if path:
        why = writable_file(path)
        if why:
            raise ConfigError(f"{flag}: {why}")


def writable_file(path: str) -> str | None:
    """Why a file could not be written at `path` (missing or read-only folder, a directory), or None."""
    target = Path(path).expanduser()
    folder = target.resolve().parent
    if target.is_dir():
        return f"{path!r} is a directory"
    if not folder.is_dir():
        return f"folder {str(target.parent)!r} does not exist"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{path!r} is not writable"
    if not target.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {str(folder)!r} is not writable"
    return None


def check_listen(host: str | None, port: int | None) -> None:
    """Fail before any work when /metrics could not listen at host:port (the port taken, a bad address):
    the same address metrics.serve would use, bound once and released."""
    if not port:  # None: no endpoint; 0: any free port
        return
    host = (host or os.environ.get("DUALWRITE_METRICS_HOST") or "127.0.0.1").strip()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port} ({why})") from None


# -- parameter types: every command checks its flags the same way, before any work -------------------
class FiniteFloat(click.ParamType):
    """A finite number (never nan/inf) within [min, max] (`min_open`: strictly above min)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, *, min_open: bool = False) -> None:  # noqa: A002
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        if low or (self.max is not None and number > self.max):
            self.fail(f"{value!r} is not in {self.describe()}", param, ctx)
        return number

    def describe(self) -> str:
        lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {_num(self.min)}"
        hi = "" if self.max is None else f"<= {_num(self.max)}"
        return "the range " + " and ".join(x for x in (lo, hi) if x)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def Count(min: int = 0, max: int | None = None) -> click.IntRange:  # noqa: A002, N802
    """A whole number within [min, max] (click.IntRange, named for what it holds)."""
    return click.IntRange(min=min, max=max)


def max_rejects_option(stops: str) -> Callable[[Any], Any]:
    """--max-rejects for a command that copies rows; `stops` says what it does once past the limit."""
    return click.option(
        "--max-rejects", type=Count(0), default=None, metavar="N", help=f"{stops} once more than N rows were rejected"
    )


PORT = click.IntRange(min=0, max=65535)
# Upper bounds: far above any real use, low enough that a typo (an extra zero or six) is caught.
RATE = FiniteFloat(0, 1e9)  # rows per second
MILLIS = FiniteFloat(0, 3_600_000)  # at most an hour
SECONDS = FiniteFloat(0, 7 * 86400)  # at most a week
FRACTION = FiniteFloat(0, 1)  # a rate such as mismatches per comparison


class ReportPath(click.ParamType):
    """A file the command will write (a --report, a rejects file): refused at once when it could not be."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        why = writable_file(str(value))
        if why:
            self.fail(why, param, ctx)
        return str(value)


REPORT_PATH = ReportPath()


def csv(values: tuple[str, ...]) -> list[str]:
    """Flag values given repeatedly and/or comma-separated, as one list."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def priorities(values: list[str]) -> list[int]:
    try:
        return [int(p[1:] if p[:1] in "Pp" else p) for p in values]
    except ValueError:
        raise ConfigError(f"--priority takes P0,P1,... (got {','.join(values)})") from None
