"""Fixtures for the core (issue 3) tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dualwrite.settings import Settings


@pytest.fixture
def rclient(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()
