"""Every error dualwrite raises on purpose, under `DualwriteError`: each carries a one-line message that
names what and where. The CLI prints it as one line and exits 2 (1 for a refused phase change)."""

from __future__ import annotations


class DualwriteError(Exception):
    """Base for errors that carry a user-facing one-line message."""


class ConfigError(DualwriteError):
    """A setting is malformed, a server does not answer, or a file is missing."""


class PhaseError(DualwriteError):
    """A phase change was refused (too far forward, or a rollback past the last complete side)."""


class PhaseUnknownError(DualwriteError):
    """Neither Redis nor any database could be read for the phase: this process does not write."""


class EventDecodeError(DualwriteError):
    """A stream event could not be decoded (poison): it goes to the dead-letter stream."""


class EventTooLargeError(DualwriteError):
    """A change's event would exceed MAX_EVENT_BYTES: the write is refused on the primary (nothing committed),
    since no replayer could ever decode it."""


class UnknownTableError(DualwriteError):
    """An event or request names a table that is not among the captured tables."""


class SchemaDriftError(DualwriteError):
    """A row image names columns the table does not have: applying it would silently drop data."""


class UnsupportedSchemaError(ConfigError):
    """A foreign key's referential action could change rows the capture cannot find."""


class PrimaryMovedError(DualwriteError):
    """The backend this transaction began on is no longer the primary (a switch is under way)."""


class SecondaryApplyError(DualwriteError):
    """Strict mode: the other backend could not be written."""


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an error (the driver's message for a database error), at most `limit` characters."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:limit]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a Postgres error (psycopg 3 or psycopg2, wrapped by SQLAlchemy or not)."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
