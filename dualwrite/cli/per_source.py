"""Commands over a project file's sources (see dualwrite.project): a command runs once per selected source,
in priority order, and says which; or, marked `all_sources`, takes them all at once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dualwrite.errors import DualwriteError, PhaseError
from dualwrite.settings import Settings, mask_text


def all_sources(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command (below @connection_options) that takes every selected source at once, as
    `sources: list[Settings]` (status, migrate), instead of being run once per source."""
    fn.dualwrite_all_sources = True  # type: ignore[attr-defined]
    return fn


def selection(runs: list[Settings], source: str | None, wanted: list[str]) -> str:
    """What a command works on, in one line: one source, those of a priority, or all in priority order."""
    names = ", ".join(f"{s.source} (P{s.priority})" for s in runs)
    if source:
        return f"source {names}"
    if wanted:
        return f"priority {','.join(wanted)}: {len(runs)} source(s) in priority order: {names}"
    return f"all {len(runs)} source(s) in priority order: {names}"


def run_per_source(fn: Callable[..., Any], runs: list[Settings], said: str, args: Any, kw: dict[str, Any]) -> None:
    """Run the command for each source in turn (a failure of one does not stop the next); its --report
    gets the source's name; the exit code is the worst of them. With --json the headers go to stderr:
    stdout is then one JSON document per line, one per source."""
    to_stderr = bool(kw.get("as_json"))
    click.echo(f"dualwrite: {said}", err=to_stderr)
    worst = 0
    for settings in runs:
        if len(runs) > 1:
            click.echo(f"== source {settings.source} (P{settings.priority}) ==", err=to_stderr)
        each = dict(kw)
        if len(runs) > 1 and each.get("report_path"):
            path = Path(each["report_path"])
            each["report_path"] = str(path.with_name(f"{path.stem}-{settings.source}{path.suffix}"))
        code: int | str | None = 0
        try:
            fn(*args, settings=settings, **each)
        except SystemExit as exc:
            code = exc.code
        except PhaseError as exc:
            click.echo(f"error: source {settings.source}: {mask_text(str(exc))}", err=True)
            code = 1
        except DualwriteError as exc:
            click.echo(f"error: source {settings.source}: {mask_text(str(exc))}", err=True)
            code = 2
        worst = max(worst, code if isinstance(code, int) else 1)
    sys.exit(worst)


__all__ = ["all_sources", "run_per_source", "selection"]
