"""The `dualwrite` command line: one click group, one module per command group."""

from dualwrite.cli.main import main

__all__ = ["main"]
