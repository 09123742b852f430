"""The series the dashboards tell the cutover's story with, from the processes that own them: the whole
`dual` write only while a second side is written, the time of each phase change (flip annotations), the
shadow candidate's latency, and the gate's every condition with the next flip's verdict."""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select

from dualwrite import metrics
from dualwrite.cutover import gate
from dualwrite.cutover.flip import flip
from dualwrite.shadow.reader import ShadowReader
from tests.shadow.helpers import items, writer


def dual_count() -> float:
    return metrics.sample(
        "dualwrite_write_duration_seconds_count", {"backend": "dual", "store": "shtest", "op": "insert"}
    )


def count(backend: str) -> float:
    labels = {"backend": backend, "store": "shtest", "op": "insert"}
    return metrics.sample("dualwrite_write_duration_seconds_count", labels)


def test_dual_is_observed_only_while_both_sides_are_written(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, "sqlite")
    try:
        before = (dual_count(), count("sqlite"))
        dw.execute(insert(items).values(id=1, name="one"))
        assert (dual_count(), count("sqlite")) == (before[0], before[1] + 1)  # one side: no dual series moves
        dw.phases.set("dual_write", reason="test")
        dw.execute(insert(items).values(id=2, name="two"))
        assert dual_count() == before[0] + 1
    finally:
        dw.close()
    dw = writer(settings.with_(namespace=settings.namespace + ":pg"), "postgres")
    try:
        before_pg, before_dual = count("postgres"), dual_count()
        dw.execute(insert(items).values(id=3, name="three"))
        assert count("postgres") == before_pg + 1 and dual_count() == before_dual
    finally:
        dw.close()


def test_phase_change_time_comes_from_the_shared_history(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, "sqlite")
    try:
        dw.execute(insert(items).values(id=1, name="one"))
        dw.phases.set("dual_write", reason="another process flipped")
        at = datetime.fromisoformat(str(dw.phases.history(1)[-1]["at"])).timestamp()
        time.sleep(dw.phases.cache_seconds + 0.1)  # this process notices within the phase cache
        dw.execute(insert(items).values(id=2, name="two"))
        assert metrics.sample("dualwrite_phase", {"phase": "dual_write"}) == 1
        assert metrics.sample("dualwrite_phase", {"phase": "sqlite"}) == 0
        assert metrics.sample("dualwrite_phase_changed_timestamp_seconds", {"phase": "dual_write"}) == at
    finally:
        dw.close()


def test_flip_records_the_change_time(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, "sqlite")
    try:
        t0 = time.time()
        assert flip(dw.backends, dw.tables).moved
        stamp = metrics.sample("dualwrite_phase_changed_timestamp_seconds", {"phase": "dual_write"})
        assert t0 <= stamp <= time.time()
    finally:
        dw.close()


def test_shadow_candidate_latency_is_its_own_histogram(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, "shadow")
    reader = ShadowReader(percentage=100, synchronous=True).install(dw)
    try:
        dw.execute(insert(items).values(id=1, name="one"))
        labels = {"backend": "postgres", "store": "shtest", "query": "count"}
        before = metrics.sample("dualwrite_shadow_candidate_duration_seconds_count", labels)
        for _ in range(3):
            assert (
                dw.read("shtest", "count", lambda c: c.execute(select(func.count()).select_from(items)).scalar()) == 1
            )
        assert metrics.sample("dualwrite_shadow_candidate_duration_seconds_count", labels) == before + 3
        assert metrics.sample("dualwrite_shadow_candidate_duration_seconds_sum", labels) > 0
    finally:
        reader.close()
        dw.close()


def test_gate_export_sets_every_condition_the_verdict_and_the_phase(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, "sqlite")
    try:
        for name in gate.CHECKS:
            metrics.GATE_CONDITION.labels(name).set(-1)  # so every value below was set by this export
        result = gate.export(dw.backends, dw.tables)
        assert (result.current, result.target, result.ok) == ("sqlite", "dual_write", True)  # nothing required
        assert metrics.sample("dualwrite_gate_open", {"target": "dual_write"}) == 1
        values = {name: metrics.sample("dualwrite_gate_condition", {"condition": name}) for name in gate.CHECKS}
        assert values["backfill_complete"] == 0 and values["verify_clean"] == 0  # never copied, never verified
        assert values["dead_letters_empty"] == 1 and values["outbox_drained"] == 1
        assert set(values.values()) <= {0.0, 1.0}
        assert metrics.sample("dualwrite_phase", {"phase": "sqlite"}) == 1
        dw.phases.set("dual_write", reason="test")
        assert not gate.export(dw.backends, dw.tables).ok  # shadow needs the copy done
        assert metrics.sample("dualwrite_gate_open", {"target": "shadow"}) == 0
        assert REGISTRY.get_sample_value("dualwrite_gate_open", {"target": "dual_write"}) is None  # the old one goes
        assert metrics.sample("dualwrite_phase", {"phase": "dual_write"}) == 1
    finally:
        dw.close()
