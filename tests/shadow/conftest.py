"""The shadow tests' writer: helpers.py's tables in phase `shadow`, 50 items seeded on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from tests.shadow.helpers import item_rows, items, seed, writer


@pytest.fixture
def dw(settings: Settings) -> Iterator[DualWriter]:
    w = writer(settings, phase="shadow")
    seed(w, items, item_rows(50))
    yield w
    w.close()
