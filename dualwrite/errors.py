"""Errors the CLI turns into one clear line (exit code 2 for configuration, 1 for a failed check)."""


class DualwriteError(Exception):
    """Base for errors that carry a user-facing one-line message."""


class ConfigError(DualwriteError):
    """A setting is malformed, a server does not answer, or a file is missing."""


class PhaseError(DualwriteError):
    """A phase change was refused (too far forward, or a rollback past the last complete side)."""


class EventDecodeError(DualwriteError):
    """A stream event could not be decoded (poison): it goes to the dead-letter stream."""


class UnknownTableError(DualwriteError):
    """An event or request names a table that is not in the registry."""
