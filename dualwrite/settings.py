"""One settings object: flags override DUALWRITE_* environment variables, which override the project file
(`dualwrite.toml`, see project.py), which overrides defaults. `load_sources` gives one Settings per source
the project file declares (the ones a command selected, in priority order).

Every problem is raised as ConfigError with one line that names the setting and what is wrong; a
URL is never printed with its password (see `mask_url`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dualwrite.errors import ConfigError

DEFAULT_SQLITE = "dualwrite.db"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_NAMESPACE = "dualwrite"
DEFAULT_STATE_SCHEMA = "_dualwrite"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ***; safe to print or log."""
    if not url:
        return ""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", str(url))


def mask_text(text: str, secrets: list[str] | None = None) -> str:
    """Mask every URL password in free text, and any literal secret given."""
    out = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", str(text))
    for secret in secrets or []:
        if secret:
            out = out.replace(secret, "***")
    return out


def _sqlite_url(value: str, setting: str) -> str:
    """Accept a file path or a sqlite:/// URL; return a SQLAlchemy URL string."""
    value = value.strip()
    if not value:
        raise ConfigError(f"{setting}: empty value; give a file path or a sqlite:/// URL")
    if "://" in value:
        if not value.startswith("sqlite"):
            raise ConfigError(f"{setting}: {mask_url(value)!r} is not a sqlite:/// URL or a file path")
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ConfigError(f"{setting}: malformed URL {mask_url(value)!r} ({exc})") from None
        if url.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise ConfigError(f"{setting}: driver {url.drivername!r} is not supported; use sqlite:///PATH")
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"{setting}: needs a database file (sqlite:///PATH); in-memory is not shared")
        return f"sqlite:///{url.database}"
    return f"sqlite:///{Path(value).expanduser()}"


def _postgres_url(value: str, setting: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        raise ConfigError(f"{setting}: {mask_url(value)!r} is not a postgresql:// URL")
    try:
        url = make_url(value.replace("postgres://", "postgresql://", 1))
        _ = parts.port  # raises ValueError on a non-numeric port
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{setting}: malformed URL {mask_url(value)!r} ({exc})") from None
    if not url.host and "host" not in url.query:
        raise ConfigError(f"{setting}: {mask_url(value)!r} names no host")
    if not url.database:
        raise ConfigError(f"{setting}: {mask_url(value)!r} names no database")
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def _redis_url(value: str, setting: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{setting}: {mask_url(value)!r} is not a redis:// URL")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"{setting}: malformed URL {mask_url(value)!r} ({exc})") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{setting}: {mask_url(value)!r} names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"{setting}: database {path!r} in {mask_url(value)!r} is not a number")
    return value


@dataclass(frozen=True, repr=False)
class Settings:
    sqlite_url: str = f"sqlite:///{DEFAULT_SQLITE}"
    postgres_url: str = DEFAULT_POSTGRES
    redis_url: str = DEFAULT_REDIS
    namespace: str = DEFAULT_NAMESPACE
    # Postgres schema the application's tables live in (tests give each test its own).
    pg_schema: str = "public"
    # Postgres schema of dualwrite's own tables (outbox, versions, meta, backfill checkpoints)
    state_schema: str = DEFAULT_STATE_SCHEMA
    # strict: a failed secondary apply raises instead of being left to the replayer.
    strict: bool = False
    # write_behind: while reads come from the primary, the other side is applied by the replayer from the
    # stream, off the request path (README: Write-behind); refused with strict.
    write_behind: bool = False
    phase_cache_seconds: float = 0.5
    # module:attr of the application's tables (a Tables, MetaData or declarative base), for the CLI
    metadata: str | None = None
    # Each of a process' three Postgres engines (reads/primary writes, replicated applies, the inline apply)
    # keeps up to pool_size connections and opens up to max_overflow more under load: at most
    # 3 * (pool_size + max_overflow) per process (30 by default). pre-ping tests a pooled connection before
    # use (one round trip) so a restarted server costs no failed statement; the inline apply never pings.
    pool_size: int = 5
    max_overflow: int = 5
    pool_pre_ping: bool = True
    # Bounded state (stream/retention.py): acknowledged stream entries kept below the trim point, and how
    # long published outbox rows are kept (how far back a lost stream can be rebuilt).
    stream_retention: int = 10_000
    outbox_retention_s: float = 86_400.0
    # where each setting came from: a flag, a DUALWRITE_* variable, or "FILE line N: [table] key"
    origins: dict[str, str] = field(default_factory=dict, compare=False)
    # the project file's source these settings are for (None: no project file, or its shared settings)
    source: str | None = None
    priority: int = 0
    # the source's tables are its SQLite file's own (`reflect = true`), not models
    reflect: bool = False

    @property
    def sqlite_path(self) -> Path:
        return Path(self.sqlite_url.removeprefix("sqlite:///"))

    def masked(self) -> dict[str, str]:
        return {
            "sqlite": self.sqlite_url,
            "postgres": mask_url(self.postgres_url),
            "redis": mask_url(self.redis_url),
            "namespace": self.namespace,
            "pg_schema": self.pg_schema,
            "state_schema": self.state_schema,
            "metadata": self.metadata or "",
        }

    def __repr__(self) -> str:
        # Settings end up in log lines and tracebacks with locals: never show a password there.
        shown = {
            **({"source": self.source} if self.source else {}),
            **self.masked(),
            "strict": self.strict,
            "write_behind": self.write_behind,
            "phase_cache_seconds": self.phase_cache_seconds,
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_pre_ping": self.pool_pre_ping,
            "stream_retention": self.stream_retention,
            "outbox_retention_s": self.outbox_retention_s,
        }
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__

    def key(self, *parts: str) -> str:
        """A Redis key under this namespace."""
        return ":".join((self.namespace, *parts))

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)

    @property
    def password(self) -> str | None:
        secrets = [make_url(self.postgres_url).password, urlsplit(self.redis_url).password]
        return next((s for s in secrets if s), None)


_ENV = {
    "sqlite_url": "DUALWRITE_SQLITE_URL",
    "postgres_url": "DUALWRITE_POSTGRES_URL",
    "redis_url": "DUALWRITE_REDIS_URL",
    "namespace": "DUALWRITE_NAMESPACE",
    "pg_schema": "DUALWRITE_PG_SCHEMA",
    "state_schema": "DUALWRITE_STATE_SCHEMA",
    "strict": "DUALWRITE_STRICT",
    "write_behind": "DUALWRITE_WRITE_BEHIND",
    "metadata": "DUALWRITE_METADATA",
    "pool_size": "DUALWRITE_POOL_SIZE",
    "max_overflow": "DUALWRITE_MAX_OVERFLOW",
    "pool_pre_ping": "DUALWRITE_POOL_PRE_PING",
    "stream_retention": "DUALWRITE_STREAM_RETENTION",
    "outbox_retention_s": "DUALWRITE_OUTBOX_RETENTION",
}
_FLAGS = {
    "sqlite_url": "--sqlite",
    "postgres_url": "--postgres",
    "redis_url": "--redis",
    "namespace": "--namespace",
    "pg_schema": "--pg-schema",
    "state_schema": "--state-schema",
    "strict": "--strict",
    "write_behind": "--write-behind",
    "metadata": "--metadata",
    "pool_size": "--pool-size",
    "max_overflow": "--max-overflow",
    "pool_pre_ping": "--pool-pre-ping",
    "stream_retention": "--stream-retention",
    "outbox_retention_s": "--outbox-retention",
}
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _bool(value: object, setting: str) -> bool:
    if isinstance(value, str):
        if value.strip().lower() not in _BOOLS:
            raise ConfigError(f"{setting}: {value!r} is not a boolean (1/0, true/false, yes/no, on/off)")
        return _BOOLS[value.strip().lower()]
    return bool(value)


def _count(value: object, setting: str, minimum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{setting}: {value!r} is not a whole number") from None
    if n < minimum:
        raise ConfigError(f"{setting}: {n} is below {minimum}")
    return n


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _span_s(value: object, setting: str) -> float:
    """A duration: seconds, or a number with s/m/h/d (e.g. 24h)."""
    m = _SPAN.match(str(value).lower())
    if not m:
        raise ConfigError(f"{setting}: {value!r} is not a duration (seconds, or a number with s/m/h/d: 24h)")
    return float(m[1]) * _UNIT_S[m[2]]


def _retention(values: dict[str, object], raw: dict[str, object], origins: dict[str, str]) -> None:
    if "stream_retention" in raw:
        values["stream_retention"] = _count(raw["stream_retention"], origins["stream_retention"], 0)
    if "outbox_retention_s" in raw:
        values["outbox_retention_s"] = _span_s(raw["outbox_retention_s"], origins["outbox_retention_s"])


def with_retention(settings: Settings, stream: object = None, outbox: object = None) -> Settings:
    """`settings` with the --stream-retention/--outbox-retention flags of a command applied (None: keep)."""
    raw = {k: v for k, v in (("stream_retention", stream), ("outbox_retention_s", outbox)) if v is not None}
    if not raw:
        return settings
    values: dict[str, object] = {}
    _retention(values, raw, {k: _FLAGS[k] for k in raw})
    return replace(settings, **values, origins={**settings.origins, **{k: _FLAGS[k] for k in raw}})  # type: ignore[arg-type]


# Settings that belong to one SQLite store: given by a flag or variable they cannot apply to several sources.
PER_SOURCE = ("sqlite_url", "pg_schema", "metadata")


def load_settings(
    env: dict[str, str] | None = None, *, source: str | None = None, config: str | None = None, **flags: object
) -> Settings:
    """Settings from flags (non-None values win), then the environment, then the project file (its
    `source`, then its [dualwrite] table), then defaults. An `env` given (even {}) is the whole
    environment: no ./dualwrite.toml is looked for then, only `config`."""
    ambient, env = env is None, dict(os.environ if env is None else env)
    project = _project(config, env, ambient)
    if source is None:
        return _build(env, flags, project, None)
    if project is None:
        raise ConfigError(f"--source {source}: no project file (dualwrite.toml here, --config or DUALWRITE_CONFIG)")
    return _build(env, flags, project, project.select(source)[0])


def load_sources(
    env: dict[str, str] | None = None,
    *,
    source: str | None = None,
    priorities: list[int] | None = None,
    config: str | None = None,
    **flags: object,
) -> list[Settings]:
    """One Settings per selected source of the project file (by name, by priority, or all), in priority
    order; without a project file that declares sources, the one Settings of load_settings (a
    --source is then refused; `priorities` are left to the command, e.g. backfill's table filter)."""
    ambient, env = env is None, dict(os.environ if env is None else env)
    project = _project(config, env, ambient)
    if project is None or not project.sources:
        if source is not None:
            where = f"{project.path} declares no [sources.*]" if project else "no project file"
            raise ConfigError(f"--source {source}: {where} (dualwrite.toml here, --config or DUALWRITE_CONFIG)")
        return [_build(env, flags, project, None)]
    chosen = project.select(source, priorities)
    if len(chosen) > 1:
        for name in PER_SOURCE:
            given = _FLAGS[name] if flags.get(name) is not None else (_ENV[name] if env.get(_ENV[name]) else None)
            if given:
                raise ConfigError(
                    f"{given}: {len(chosen)} sources are selected ({', '.join(s.name for s in chosen)}) and it would "
                    "apply to each; pick one with --source NAME, or set it in the project file"
                )
    return [_build(env, flags, project, s) for s in chosen]


def _project(config: str | None, env: dict[str, str], ambient: bool) -> Any:
    from dualwrite import project

    path = project.find(config, env, here=ambient)
    return project.load(path) if path is not None else None


def _build(env: dict[str, str], flags: dict[str, object], project: Any, src: Any) -> Settings:
    raw: dict[str, object] = {}
    origins: dict[str, str] = {}
    derived: dict[str, str] = {}  # namespace/state_schema of a source: derived from the base unless it sets them
    for name, var in _ENV.items():
        if src is not None and name in ("namespace", "state_schema") and name in src.values:
            raw[name], origins[name] = src.values[name], src.where[name]
        elif flags.get(name) is not None:
            raw[name], origins[name] = flags[name], _FLAGS[name]
        elif env.get(var):
            raw[name], origins[name] = env[var], var
        elif src is not None and name in src.values:
            raw[name], origins[name] = src.values[name], src.where[name]
        elif project is not None and name in project.shared:
            raw[name], origins[name] = project.shared[name], project.where[name]
        if src is not None and name in ("namespace", "state_schema") and name not in src.values:
            derived[name] = name
    values: dict[str, object] = {}
    if src is not None:
        values.update(source=src.name, priority=src.priority, reflect=src.reflect)
        base_ns = str(raw.get("namespace", DEFAULT_NAMESPACE))
        base_state = str(raw.get("state_schema", DEFAULT_STATE_SCHEMA))
        if "namespace" in derived:
            raw["namespace"] = f"{base_ns}:{src.name}"
            origins["namespace"] = origins.get("namespace", "default") + f" + ':{src.name}'"
        if "state_schema" in derived:
            raw["state_schema"] = f"{base_state}_{src.name}"
            origins["state_schema"] = origins.get("state_schema", "default") + f" + '_{src.name}'"
        if "pg_schema" not in raw:
            raw["pg_schema"], origins["pg_schema"] = src.name, f"[sources.{src.name}] (its name)"
    if "sqlite_url" in raw:
        values["sqlite_url"] = _sqlite_url(str(raw["sqlite_url"]), origins["sqlite_url"])
    if "postgres_url" in raw:
        values["postgres_url"] = _postgres_url(str(raw["postgres_url"]), origins["postgres_url"])
    else:
        values["postgres_url"] = _postgres_url(DEFAULT_POSTGRES, "default postgres URL")
    if "redis_url" in raw:
        values["redis_url"] = _redis_url(str(raw["redis_url"]), origins["redis_url"])
    if "namespace" in raw:
        ns = str(raw["namespace"])
        if not _NAMESPACE_RE.match(ns):
            raise ConfigError(
                f"{origins['namespace']}: namespace {ns!r} must be 1-64 characters of letters, digits, _ . : -"
            )
        values["namespace"] = ns
    for name in ("pg_schema", "state_schema"):
        if name in raw:
            schema = str(raw[name])
            if not _SCHEMA_RE.match(schema):
                raise ConfigError(f"{origins[name]}: schema {schema!r} is not a plain identifier")
            values[name] = schema
    for name in ("strict", "write_behind", "pool_pre_ping"):
        if name in raw:
            values[name] = _bool(raw[name], origins[name])
    if values.get("strict") and values.get("write_behind"):
        raise ConfigError(f"{origins['write_behind']}: write-behind and strict mode exclude each other")
    if "pool_size" in raw:
        values["pool_size"] = _count(raw["pool_size"], origins["pool_size"], 1)
    if "max_overflow" in raw:
        values["max_overflow"] = _count(raw["max_overflow"], origins["max_overflow"], 0)
    _retention(values, raw, origins)
    if "metadata" in raw:
        spec = str(raw["metadata"]).strip()
        if not re.match(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$", spec):
            raise ConfigError(f"{origins['metadata']}: {spec!r} is not module:attribute (e.g. myapp.models:Base)")
        values["metadata"] = spec
    if values.get("reflect") and "metadata" in values and origins["metadata"] in (_FLAGS["metadata"], _ENV["metadata"]):
        values["reflect"] = False  # --metadata (or the variable) for a `reflect = true` source: the models win
    return Settings(**values, origins=origins)  # type: ignore[arg-type]
