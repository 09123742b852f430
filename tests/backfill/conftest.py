"""The backfill tests' writer: the tables of support.py on both backends, in the test module's PHASE
(`sqlite` unless the module sets PHASE = "dual_write")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.backfill.support import catalog


@pytest.fixture
def dw(settings: Settings, request: pytest.FixtureRequest) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase=getattr(request.module, "PHASE", "sqlite"))
    yield w
    w.close()
