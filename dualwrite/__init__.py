"""dualwrite: move a live application from SQLite to PostgreSQL with zero downtime.

    from dualwrite import DualWriter, Tables, load_settings

    dw = DualWriter(load_settings(), tables=Tables.of(models.Base.metadata), relay=True)
    with dw.begin() as tx:
        rows = tx.execute(insert(items).values(...))       # SQLite and Postgres, every change an event
    with dw.session() as session:                          # the same for ORM code
        session.add(Item(...))

The roles live in subpackages: `dualwrite.backfill` (history copy), `dualwrite.stream` (relay, replay,
dead letters), `dualwrite.shadow` (shadow reads), `dualwrite.verify`, `dualwrite.cutover`,
`dualwrite.migrate`; `dualwrite.cli` is the command line. Names are imported on first use, so
`import dualwrite` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module defining it
_EXPORTS = {
    "DualWriter": "dualwrite.adapter",
    "WriteTx": "dualwrite.capture",
    "Backends": "dualwrite.engines",
    "Tables": "dualwrite.tables",
    "TableSpec": "dualwrite.tables",
    "Settings": "dualwrite.settings",
    "load_settings": "dualwrite.settings",
    "load_sources": "dualwrite.settings",
    "ChangeEvent": "dualwrite.events",
    "Phase": "dualwrite.phase",
    "PHASES": "dualwrite.phase",
    "DualwriteError": "dualwrite.errors",
    "ConfigError": "dualwrite.errors",
    "PhaseError": "dualwrite.errors",
    "UnknownTableError": "dualwrite.errors",
    "EventDecodeError": "dualwrite.errors",
    "EventTooLargeError": "dualwrite.errors",
    "SchemaDriftError": "dualwrite.errors",
    "UnsupportedSchemaError": "dualwrite.errors",
    "PrimaryMovedError": "dualwrite.errors",
    "SecondaryApplyError": "dualwrite.errors",
}

__all__ = [
    "__version__",
    "DualWriter",
    "WriteTx",
    "Backends",
    "Tables",
    "TableSpec",
    "Settings",
    "load_settings",
    "load_sources",
    "ChangeEvent",
    "Phase",
    "PHASES",
    "DualwriteError",
    "ConfigError",
    "PhaseError",
    "UnknownTableError",
    "EventDecodeError",
    "EventTooLargeError",
    "SchemaDriftError",
    "UnsupportedSchemaError",
    "PrimaryMovedError",
    "SecondaryApplyError",
]

if TYPE_CHECKING:
    from dualwrite.adapter import DualWriter
    from dualwrite.capture import WriteTx
    from dualwrite.engines import Backends
    from dualwrite.errors import (
        ConfigError,
        DualwriteError,
        EventDecodeError,
        EventTooLargeError,
        PhaseError,
        PrimaryMovedError,
        SchemaDriftError,
        SecondaryApplyError,
        UnknownTableError,
        UnsupportedSchemaError,
    )
    from dualwrite.events import ChangeEvent
    from dualwrite.phase import PHASES, Phase
    from dualwrite.settings import Settings, load_settings, load_sources
    from dualwrite.tables import Tables, TableSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dualwrite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
