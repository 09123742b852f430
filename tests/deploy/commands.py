"""Is a command line of the deployment real? `dualwrite ...` is parsed by our click commands themselves (an
unknown flag or a bad value fails, nothing runs); `gunicorn ...` by gunicorn's own parser, with the config
module and the application it names resolved."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import tempfile
from typing import Any

import click


def dualwrite_params(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """('dualwrite backfill run', the parsed parameters) for a `dualwrite ...` argv; click's error otherwise."""
    from dualwrite.cli import main

    assert argv[0] == "dualwrite", argv
    cmd: click.Command = main
    rest, path = list(argv[1:]), ["dualwrite"]
    while isinstance(cmd, click.Group):
        assert rest, f"{' '.join(path)}: no subcommand given"
        sub = cmd.get_command(click.Context(cmd, info_name=path[-1]), rest[0])
        assert sub is not None, f"{' '.join(path)} has no command {rest[0]!r}"
        path.append(rest.pop(0))
        cmd = sub
    with tempfile.TemporaryDirectory() as root:
        # Paths under the container's volumes (/data, /var/lib/dualwrite) do not exist on this host: the
        # parser checks a report or rejects file's folder, so they are checked inside a stand-in root.
        moved = {_in_root(root, a): a for a in rest if _volume_path(a)}
        ctx = cmd.make_context(" ".join(path), [_in_root(root, a) if _volume_path(a) else a for a in rest])
        params = {k: moved.get(v, v) if isinstance(v, str) else v for k, v in ctx.params.items()}
    return " ".join(path), params  # parsed and validated every flag; invoked nothing


def _volume_path(arg: str) -> bool:
    return arg.startswith("/") and not os.path.isdir(os.path.dirname(arg))


def _in_root(root: str, path: str) -> str:
    os.makedirs(os.path.dirname(root + path), exist_ok=True)
    return root + path


def gunicorn_args(argv: list[str]) -> Any:
    """gunicorn's parsed arguments; its config module has hooks, and its application is a WSGI callable.
    The config module is not imported here (dualwrite.prefork sets PROMETHEUS_MULTIPROC_DIR on import)."""
    from gunicorn.config import Config

    assert argv[0] == "gunicorn", argv
    try:
        ns = Config().parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of saying "bad argument"
        raise AssertionError(f"gunicorn rejects {argv}: exit {exc.code}") from None
    assert ns.config and ns.config.startswith("python:"), ns.config
    spec = importlib.util.find_spec(ns.config.removeprefix("python:"))
    assert spec is not None and spec.origin, f"no module {ns.config}"
    tree = ast.parse(open(spec.origin).read())
    hooks = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"on_starting", "when_ready", "child_exit"} <= hooks, hooks
    (target,) = ns.args
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr or "application")), target
    return ns
