"""The project file: `dualwrite.toml` in the working directory, or the file `--config` / DUALWRITE_CONFIG
names. It holds what every command would otherwise be told by flags, and the application's **sources**:
one per SQLite store file, each moved (and rolled back) on its own.

    [dualwrite]                          # shared settings, as DUALWRITE_* would give them (all optional)
    postgres = "postgresql://app@db/app"
    redis = "redis://127.0.0.1:6379/0"
    namespace = "myapp"                  # each source's default namespace is "myapp:<source>"

    [sources.memory]
    sqlite = "stores/memory.db"          # relative to this file's folder
    models = "myapp.memory:Base"         # or: reflect = true (the file's own tables)
    priority = "P0"                      # P0 moves first (default P0)
    pg_schema = "memory"                 # default: the source's name; several may share one
    # namespace = "myapp:memory"         # default "<namespace>:<source>"
    # state_schema = "_dualwrite_memory" # default "<state_schema>_<source>"

A source is a whole dualwrite setup of its own (its phase, outbox, sequence numbers, stream, gate and
checkpoints live under its namespace, its SQLite file and its state schema), so one source can be in
`postgres` while another is still in `dual_write`. Precedence: flags > DUALWRITE_* > this file > defaults.
Every problem is one ConfigError line naming the file and the line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualwrite.errors import ConfigError

FILE_NAME = "dualwrite.toml"
# [dualwrite] key -> Settings field; the values are checked by settings.load_settings like any other layer.
SHARED_KEYS = {
    "sqlite": "sqlite_url",
    "postgres": "postgres_url",
    "redis": "redis_url",
    "namespace": "namespace",
    "pg_schema": "pg_schema",
    "state_schema": "state_schema",
    "strict": "strict",
    "models": "metadata",
    "pool_size": "pool_size",
    "max_overflow": "max_overflow",
    "pool_pre_ping": "pool_pre_ping",
    "stream_retention": "stream_retention",
    "outbox_retention": "outbox_retention_s",
}
SOURCE_KEYS = ("sqlite", "models", "reflect", "priority", "pg_schema", "namespace", "state_schema")
# A source's name becomes part of schema names and Redis keys: keep it a short plain identifier.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")


@dataclass(frozen=True)
class Source:
    name: str
    priority: int
    values: dict[str, Any]  # Settings field -> value as written (sqlite already made absolute)
    where: dict[str, str]  # Settings field -> "FILE line N: [sources.NAME] key", for error messages
    reflect: bool = False


@dataclass(frozen=True)
class Project:
    path: Path
    shared: dict[str, Any] = field(default_factory=dict)  # Settings field -> value, from [dualwrite]
    where: dict[str, str] = field(default_factory=dict)
    sources: tuple[Source, ...] = ()

    def select(self, name: str | None = None, priorities: list[int] | None = None) -> list[Source]:
        """The sources a command works on: one by name, those of some priorities, or all; in priority order."""
        if name is not None:
            found = [s for s in self.sources if s.name == name]
            if not found:
                known = ", ".join(s.name for s in self.sources) or "none declared"
                raise ConfigError(f"--source: no source {name!r} in {self.path} (sources: {known})")
            if priorities and found[0].priority not in priorities:
                raise ConfigError(f"--source {name} is P{found[0].priority}, not {_pnames(priorities)}")
            return found
        chosen = [s for s in self.sources if not priorities or s.priority in priorities]
        if priorities and not chosen:
            have = ", ".join(f"{s.name} (P{s.priority})" for s in self.sources)
            raise ConfigError(f"--priority {_pnames(priorities)}: no source of {self.path} has it (sources: {have})")
        return chosen


def _pnames(priorities: list[int]) -> str:
    return ",".join(f"P{p}" for p in priorities)


def find(config: str | None, env: dict[str, str], *, here: bool = True) -> Path | None:
    """The project file: --config, else DUALWRITE_CONFIG (each must exist), else ./dualwrite.toml if present
    (and `here`: not for a caller that gave its own environment)."""
    for value, origin in ((config, "--config"), (env.get("DUALWRITE_CONFIG"), "DUALWRITE_CONFIG")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{origin}: project file {str(path)!r} does not exist")
            return path
    found = Path.cwd() / FILE_NAME
    return found if here and found.is_file() else None


def parse_priority(value: object, where: str) -> int:
    text = str(value).strip()
    digits = text[1:] if text[:1] in "Pp" else text
    if not digits.isdigit():
        raise ConfigError(f"{where} {value!r} is not P0, P1, P2...")
    return int(digits)


def load(path: Path) -> Project:
    raw_text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = raw_text.splitlines()
    unknown = sorted(set(doc) - {"dualwrite", "sources"})
    if unknown:
        at = _line(lines, None, unknown[0])
        raise ConfigError(f"{path} line {at}: unknown table [{unknown[0]}] (known: [dualwrite], [sources.NAME])")
    shared, shared_where = {}, {}
    for key, value in _table(doc, "dualwrite", path, lines).items():
        where = f"{path} line {_line(lines, 'dualwrite', key)}: [dualwrite] {key}"
        if key not in SHARED_KEYS:
            raise ConfigError(f"{where}: unknown setting (known: {', '.join(SHARED_KEYS)})")
        shared[SHARED_KEYS[key]] = _path(value, path) if key == "sqlite" else value
        shared_where[SHARED_KEYS[key]] = where
    sources = [_source(name, body, path, lines) for name, body in _table(doc, "sources", path, lines).items()]
    order = sorted(range(len(sources)), key=lambda i: (sources[i].priority, i))
    return Project(path, shared, shared_where, tuple(sources[i] for i in order))


def _source(name: str, body: object, path: Path, lines: list[str]) -> Source:
    head = f"{path} line {_line(lines, f'sources.{name}', None)}: [sources.{name}]"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{head}: a source name is a letter then up to 30 letters, digits or _")
    if not isinstance(body, dict):
        raise ConfigError(f"{head}: must be a table of settings")
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in body.items():
        w = f"{path} line {_line(lines, f'sources.{name}', key)}: [sources.{name}] {key}"
        if key not in SOURCE_KEYS:
            raise ConfigError(f"{w}: unknown setting (known: {', '.join(SOURCE_KEYS)})")
        if key in ("reflect", "priority"):
            continue
        field_name = SHARED_KEYS.get(key, key)
        values[field_name] = _path(value, path) if key == "sqlite" else value
        where[field_name] = w
    if "sqlite_url" not in values:
        raise ConfigError(f'{head}: needs sqlite = "FILE" (the store\'s SQLite file)')
    reflect = body.get("reflect", False)
    if not isinstance(reflect, bool):
        raise ConfigError(
            f"{path} line {_line(lines, f'sources.{name}', 'reflect')}: [sources.{name}] reflect: true or false"
        )
    if reflect and "metadata" in values:
        raise ConfigError(f"{head}: give models or reflect = true, not both")
    pwhere = f"{path} line {_line(lines, f'sources.{name}', 'priority')}: [sources.{name}] priority"
    priority = parse_priority(body.get("priority", "P0"), pwhere)
    return Source(name, priority, values, where, reflect)


def _table(doc: dict[str, Any], key: str, path: Path, lines: list[str]) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path} line {_line(lines, None, key)}: {key} must be a table ([{key}])")
    return value


def _path(value: object, project: Path) -> str:
    """A SQLite path relative to the project file's folder (a sqlite:/// URL or an absolute path as given)."""
    text = str(value)
    if "://" in text or not text.strip():
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (project.parent / p).resolve())


def _line(lines: list[str], section: str | None, key: str | None) -> int:
    """The line (1-based) where `key` is set in [section] (or the section's header; with no section, where
    table `key` starts): tomllib keeps no positions, so look for it; the section's (or file's) first line
    when not found."""
    if section is None:
        top = re.compile(r"^\s*\[+\s*" + re.escape(key or "") + r"\b|^\s*" + re.escape(key or "") + r"\s*=")
        return next((i + 1 for i, line in enumerate(lines) if top.match(line)), 1)
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, section.split("."))) + r"\s*\]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), -1)
    if start < 0 or key is None:
        return start + 1 if start >= 0 else 1
    setting = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if setting.match(lines[i]):
            return i + 1
    return start + 1
