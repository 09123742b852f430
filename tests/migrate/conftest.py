"""Fixtures of the migrate tests."""

from __future__ import annotations

import pytest

from dualwrite.migrate import check


@pytest.fixture(params=["in-process", "child process"])
def source_side_where(request, monkeypatch):  # type: ignore[no-untyped-def]
    """A verification test both ways: the SQLite sides hashed in this process, or in the spawned process
    big files get (pytestmark = pytest.mark.usefixtures("source_side_where"))."""
    if request.param == "child process":
        monkeypatch.setattr(check, "PARALLEL_ROWS", 0)
    return request.param
