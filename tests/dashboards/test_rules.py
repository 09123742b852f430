"""Alert rules: promtool validates them and runs their unit tests (every alert, firing and quiet cases)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASH = ROOT / "dashboards"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; CI installs it)"
)


def _yaml():  # type: ignore[no-untyped-def]
    # PyYAML is not a declared dependency of the project: the structural checks need it, promtool does not.
    return pytest.importorskip("yaml", reason="PyYAML not installed (structural checks of the YAML files)")


def alert_names() -> list[str]:
    yaml = _yaml()
    doc = yaml.safe_load((DASH / "alerts.yml").read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


@needs_promtool
def test_promtool_check_rules() -> None:
    out = subprocess.run([PROMTOOL, "check", "rules", str(DASH / "alerts.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    out = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=DASH, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    yaml = _yaml()
    tests = yaml.safe_load((DASH / "alerts.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for name in alert_names():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no case where it stays quiet"


def test_expected_alerts_present() -> None:
    names = set(alert_names())
    for wanted in (
        "DualwriteReplayLagGrowing",
        "DualwriteDeadLetters",
        "DualwriteShadowMismatchRate",
        "DualwriteSecondaryApplyFailures",
        "DualwriteBackfillStalled",
        "DualwriteRelayLagHigh",
        "DualwriteOutboxBacklogHigh",
        "DualwriteShadowCandidateSlow",
        "DualwriteTargetDown",
        "DualwriteStreamUnbounded",
        "DualwriteOutboxUnbounded",
        "DualwriteFencePauseHigh",
    ):
        assert wanted in names


def test_alerts_use_only_exported_metrics() -> None:
    from dualwrite import metrics

    exported = set()
    for obj in vars(metrics).values():
        name = getattr(obj, "_name", None)
        if isinstance(name, str) and name.startswith("dualwrite_"):
            kind = getattr(obj, "_type", "")
            exported |= {name, f"{name}_total"} if kind == "counter" else {name}
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    used = set(re.findall(r"\bdualwrite_[a-z_]+", (DASH / "alerts.yml").read_text()))
    assert used and used <= exported, used - exported


def test_compose_mounts_exist() -> None:
    yaml = _yaml()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), src
    prom = yaml.safe_load((DASH / "provisioning/prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/rules/alerts.yml"]
