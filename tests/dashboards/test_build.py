"""The committed dashboards are exactly what dashboards/build.py generates, and they pass its linter."""

from __future__ import annotations

import json

import pytest

from dashboards import build


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_committed_json_is_generated(name: str) -> None:
    path = build.OUT_DIR / f"{name}.json"
    assert path.exists(), "run python -m dashboards.build"
    assert path.read_text() == build.render()[f"{name}.json"], f"{path} is stale: run python -m dashboards.build"


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboard_lint(name: str) -> None:
    assert build.check(build.DASHBOARDS[name]()) == []


def test_check_catches_problems() -> None:
    dash = build.overview()
    panel = next(p for p in dash["panels"] if p["type"] != "row")
    panel["targets"][0]["expr"] = "sum(rate(dualwrite_dead_letters_total[5m]))"
    panel["fieldConfig"]["defaults"]["unit"] = "furlongs"
    problems = build.check(dash)
    assert any("not filtered by $job/$instance" in p for p in problems)
    assert any("unit 'furlongs'" in p for p in problems)


def test_main_check_mode_passes() -> None:
    assert build.main(["--check"]) == 0


def test_required_content() -> None:
    exprs = {
        name: " ".join(t["expr"] for p in fn()["panels"] for t in p.get("targets", []))
        for name, fn in build.DASHBOARDS.items()
    }
    for metric in (
        "dualwrite_phase",
        "dualwrite_gate_condition",
        "dualwrite_gate_open",
        "dualwrite_secondary_failures_total",
        'result="mismatch"',
        "dualwrite_dead_letters_total",
        "dualwrite_outbox_backlog",
        "dualwrite_relay_lag_seconds",
        "dualwrite_stream_length",
        "dualwrite_stream_retention_events",
        "dualwrite_stream_trimmed_total",
        "dualwrite_outbox_rows",
        "dualwrite_outbox_oldest_age_seconds",
        "dualwrite_outbox_retention_seconds",
        "dualwrite_outbox_pruned_total",
    ):
        assert metric in exprs["overview"], metric
    for q in ("0.5", "0.95", "0.99"):
        for kind in ("write", "read"):
            assert (
                f"histogram_quantile({q}, sum by (le, backend) (rate(dualwrite_{kind}_duration_seconds_bucket"
                in (exprs["latency"])
            )
    for metric in (
        "dualwrite_backfill_rows_total",
        "dualwrite_backfill_rows_expected",
        "dualwrite_backfill_chunk_duration_seconds_bucket",
        "dualwrite_replay_lag_events",
        "dualwrite_replay_lag_seconds",
        "dualwrite_replay_pending",
        "dualwrite_dead_letters_total",
        "dualwrite_throttle_active",
    ):
        assert metric in exprs["backfill"], metric
    assert "dualwrite_shadow_candidate_duration_seconds_bucket" in exprs["latency"]
    assert (
        "histogram_quantile(0.99, sum by (le, instance) (rate(dualwrite_fence_pause_seconds_bucket" in exprs["latency"]
    )
    for fn in build.DASHBOARDS.values():
        dash = fn()
        flips = [a for a in dash["annotations"]["list"] if a.get("name") == "Phase flips"]
        assert len(flips) == 1 and flips[0]["useValueForTime"] is True
        assert "dualwrite_phase_changed_timestamp_seconds" in flips[0]["expr"] and "* 1000" in flips[0]["expr"]
        assert {v["name"] for v in dash["templating"]["list"]} >= {"job", "instance"}
        units = {p["fieldConfig"]["defaults"]["unit"] for p in dash["panels"] if p["type"] != "row"}
        assert units <= build.UNITS
        json.dumps(dash)  # serialisable


def test_check_catches_an_unfiltered_annotation() -> None:
    dash = build.latency()
    flips = next(a for a in dash["annotations"]["list"] if a.get("name") == "Phase flips")
    flips["expr"] = "dualwrite_phase_changed_timestamp_seconds * 1000"
    problems = build.check(dash)
    assert any("annotation 'Phase flips'" in p and "not filtered" in p for p in problems)
    assert any("target.expr differs" in p for p in problems)
