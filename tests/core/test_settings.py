"""Settings: flags over environment over defaults; one clear line per bad value; passwords masked."""

from __future__ import annotations

import pytest

from dualwrite.errors import ConfigError
from dualwrite.settings import load_settings, mask_text, mask_url


def test_flags_override_environment_which_overrides_defaults(tmp_path) -> None:
    env = {"DUALWRITE_SQLITE_URL": str(tmp_path / "env.db"), "DUALWRITE_NAMESPACE": "fromenv"}
    s = load_settings(env=env, sqlite_url=str(tmp_path / "flag.db"))
    assert s.sqlite_path == tmp_path / "flag.db"
    assert s.namespace == "fromenv"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.origins["sqlite_url"] == "--sqlite" and s.origins["namespace"] == "DUALWRITE_NAMESPACE"


def test_sqlite_accepts_path_and_url(tmp_path) -> None:
    assert load_settings(env={}, sqlite_url=f"sqlite:///{tmp_path}/a.db").sqlite_path == tmp_path / "a.db"
    assert load_settings(env={}, sqlite_url=str(tmp_path / "b.db")).sqlite_url == f"sqlite:///{tmp_path}/b.db"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"postgres_url": "mysql://u:pw@h/db"}, "--postgres"),
        ({"postgres_url": "postgresql://u:pw@h:notaport/db"}, "--postgres"),
        ({"postgres_url": "postgresql://u:pw@h:5432"}, "names no database"),
        ({"redis_url": "http://h:6379"}, "--redis"),
        ({"redis_url": "redis://h:6379/abc"}, "is not a number"),
        ({"sqlite_url": "sqlite:///:memory:"}, "in-memory"),
        ({"sqlite_url": "postgresql://h/db"}, "--sqlite"),
        ({"namespace": "has space"}, "--namespace"),
        ({"pg_schema": "bad;schema"}, "--pg-schema"),
    ],
)
def test_bad_values_give_one_line_naming_the_setting(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={}, **flags)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "pw" not in message.replace("pw@", "")  # the password itself never appears
    assert ":pw@" not in message


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="DUALWRITE_POSTGRES_URL"):
        load_settings(env={"DUALWRITE_POSTGRES_URL": "nope://x"})


def test_masking() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert "s3cret" not in mask_text("failed: postgresql://app:s3cret@db/x and then s3cret", ["s3cret"])
    s = load_settings(env={}, postgres_url="postgresql://app:s3cret@127.0.0.1/db")
    assert "s3cret" not in str(s.masked())


def test_pool_settings_defaults_environment_and_flags() -> None:
    s = load_settings(env={})
    assert (s.pool_size, s.max_overflow, s.pool_pre_ping) == (5, 5, True)
    env = {"DUALWRITE_POOL_SIZE": "3", "DUALWRITE_MAX_OVERFLOW": "0", "DUALWRITE_POOL_PRE_PING": "off"}
    s = load_settings(env=env)
    assert (s.pool_size, s.max_overflow, s.pool_pre_ping) == (3, 0, False)
    s = load_settings(env=env, pool_size="7", pool_pre_ping=True)
    assert (s.pool_size, s.max_overflow, s.pool_pre_ping) == (7, 0, True)
    assert s.origins["pool_size"] == "--pool-size" and s.origins["max_overflow"] == "DUALWRITE_MAX_OVERFLOW"
    assert "pool_size=7" in repr(s)


# a table of bad values shaped like the one above: the pool settings, read from the environment
@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DUALWRITE_POOL_SIZE": "0"}, "DUALWRITE_POOL_SIZE: 0 is below 1"),
        ({"DUALWRITE_POOL_SIZE": "many"}, "DUALWRITE_POOL_SIZE: 'many' is not a whole number"),
        ({"DUALWRITE_MAX_OVERFLOW": "-1"}, "DUALWRITE_MAX_OVERFLOW: -1 is below 0"),
        ({"DUALWRITE_POOL_PRE_PING": "maybe"}, "DUALWRITE_POOL_PRE_PING: 'maybe' is not a boolean"),
    ],
)
def test_bad_pool_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_default_sqlite_file_is_dualwrite_db() -> None:
    assert load_settings(env={}).sqlite_url == "sqlite:///dualwrite.db"
