"""Smoke test: the quick bench writes its report, and every figure names its baseline and its ratios.
No timing thresholds: the machine is shared and noisy."""

from __future__ import annotations

import json
import shutil

import pytest

from dualwrite.cli.bench import run_bench
from tests.conftest import PG_ADMIN_URL, REDIS_TEST_URL


# the copy section's baseline is pgloader, a system tool (not a Python package): without it the report
# holds an error, and this test checks there is none
@pytest.mark.skipif(
    shutil.which("pgloader") is None,
    reason="pgloader not installed (Debian package 'pgloader': apt-get install pgloader; .ci/run installs it)",
)
def test_quick_bench_writes_report_with_ratios(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    code = run_bench(quick=True, report_dir=str(out), postgres_url=PG_ADMIN_URL, redis_url=REDIS_TEST_URL)
    assert code == 0
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    doc = json.loads((out / "report.json").read_text())
    assert not doc["errors"]
    assert set(doc["sections"]) == {"ops", "overhead", "shadow", "copy", "replay", "verify", "fence"}
    for r in doc["sections"]["ops"]["results"]:  # a broken setup shows as failed ops, not as a slow machine
        assert r["success_rate"] > 0, r
    figures = doc["figures"]
    assert {f["section"] for f in figures} >= {"ops", "overhead", "copy"}
    for fig in figures:
        assert (out / fig["file"]).is_file() and (out / fig["file"]).stat().st_size > 0
        assert fig["baseline"], fig
        assert fig["ratios"], fig
        assert fig["machine"] and fig["counts"]
    md = (out / "report.md").read_text()
    assert doc["goals"]
    for goal in doc["goals"]:
        assert goal["ratio"] is not None, goal
        assert goal["name"] in md
    assert md.count(": **met**") + md.count(": **not met**") >= len(doc["goals"])


def test_the_fence_section_tracks_the_write_pause(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`dualwrite bench --sections fence`: fenced flips under three writer instances; the pause p99 and max
    are goal lines against 100 ms and the fence timeout, each round's figures in the table."""
    out = tmp_path / "report"
    code = run_bench(
        quick=True, sections="fence", report_dir=str(out), postgres_url=PG_ADMIN_URL, redis_url=REDIS_TEST_URL
    )
    doc = json.loads((out / "report.json").read_text())
    assert code == 0 and not doc["errors"], doc["errors"]
    fence = doc["sections"]["fence"]
    assert fence["flips"] >= 3 and all(r["writes_held"] > 0 for r in fence["results"]), fence
    goals = {g["name"]: g for g in doc["goals"]}
    assert goals["fence pause p99"]["baseline_value"] == 100.0 and goals["fence pause p99"]["ratio"] is not None
    assert goals["fence pause max"]["baseline_value"] == fence["fence_timeout_ms"] == 500.0
    md = (out / "report.md").read_text()
    assert "## 7. Write fence pause" in md and "fence pause max: goal ratio <= 1.0 x" in md


def test_bench_command_help() -> None:
    from click.testing import CliRunner

    from dualwrite.cli.bench import bench

    assert bench.name == "bench"
    result = CliRunner().invoke(bench, ["--help"])
    assert result.exit_code == 0
    for flag in ("--quick", "--record-counts", "--workers", "--report"):
        assert flag in result.output


def test_the_track_c_benchmark_command_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`benchmark_postgresql_migration.py --record-counts 100 500 1000` of the Track C plan is
    `dualwrite bench --sections ops --record-counts ... --workers ...` (tiny counts here): avg, median, p95,
    p99, max and success rate per run, and the plan's p99 < 100 ms target as a goal line."""
    from click.testing import CliRunner

    from dualwrite.cli.bench import bench

    out = tmp_path / "report"
    args = ["--sections", "ops", "--record-counts", "4", "8", "--workers", "1", "2", "--report", str(out)]
    result = CliRunner().invoke(bench, [*args, "--postgres", PG_ADMIN_URL, "--redis", REDIS_TEST_URL])
    assert result.exit_code == 0, result.output
    ops = json.loads((out / "report.json").read_text())["sections"]["ops"]
    assert {(r["records"], r["workers"]) for r in ops["results"]} == {(4, 1), (4, 2), (8, 1), (8, 2)}
    for r in ops["results"]:
        assert {"avg_ms", "median_ms", "p95_ms", "p99_ms", "max_ms", "success_rate"} <= set(r), r
    target = ops["target_p99"]
    assert target["goal_ms"] == 100 and target["runs"] == len(ops["results"]) and target["worst"]["p99_ms"] > 0
    md = (out / "report.md").read_text()
    assert "| avg_ms | median_ms | p95_ms | p99_ms | max_ms | success_rate |" in md.replace("  ", " ")
    assert f"- goal p99 < 100 ms per operation, 100 % success: {target['met']}/{target['runs']} runs; worst p99" in md
