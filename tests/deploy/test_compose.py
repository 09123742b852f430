"""docker-compose.yml, its Prometheus config, the image and the systemd unit, checked without a container
engine: the services, ports, volumes and environment they must have, and every command a real one (parsed by
dualwrite's and gunicorn's own parsers). tests/deploy/test_topology.py runs the same topology for real."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dualwrite import metrics
from dualwrite.settings import _ENV
from tests.deploy.commands import dualwrite_params, gunicorn_args
from tests.deploy.processes import DEPLOY, ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (the dev extra installs it)")
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROM = yaml.safe_load((ROOT / "dashboards/provisioning/prometheus/prometheus.yml").read_text())
KNOWN_ENV = set(_ENV.values()) | {metrics.HOST_ENV, metrics.PORT_ENV}
OURS = ("init", "app", "backfill")  # built from deploy/Dockerfile


def env_of(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[name].get("environment") or {}).items()}


def test_the_services_it_must_have() -> None:
    assert set(SERVICES) >= {"postgres", "redis", "prometheus", "grafana", "init", "app", "backfill"}
    for name in OURS:
        assert SERVICES[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("app", "backfill"):
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["restart"] == "unless-stopped"
    assert SERVICES["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["backfill"]["stop_signal"] == "SIGTERM"  # finishes its chunk and exits 0
    assert "--appendonly" in SERVICES["redis"]["command"]  # the phase survives a Redis restart


def test_published_ports_stay_on_the_hosts_loopback() -> None:
    published = {name: svc.get("ports", []) for name, svc in SERVICES.items()}
    assert published["app"] == ["127.0.0.1:8000:8000"]
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]
    for name, ports in published.items():
        for p in ports:
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"


def test_volumes_share_the_sqlite_file_and_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    for name in OURS:
        assert "app-data:/data" in SERVICES[name]["volumes"], name
        assert env_of(name)["DUALWRITE_SQLITE_URL"].startswith("/data/"), name
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src}"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
    assert "prometheus-data:/prometheus" in SERVICES["prometheus"]["volumes"]


def test_every_command_is_a_real_one_and_every_variable_one_we_read() -> None:
    init_cmd, init_params = dualwrite_params(SERVICES["init"]["command"])
    assert init_cmd == "dualwrite init" and init_params["create_tables"] is True
    run_cmd, run = dualwrite_params(SERVICES["backfill"]["command"])
    assert run_cmd == "dualwrite backfill run" and run["daemon"] is True and run["metrics_port"] == 9465
    assert run["rejects_path"].startswith("/data/")
    ns = gunicorn_args(SERVICES["app"]["command"])
    assert ns.config == "python:dualwrite.prefork" and int(ns.workers) >= 2 and ns.args == ["sampleapp.wsgi:app"]
    for name in OURS:
        env = env_of(name)
        unknown = {k for k in env if k.startswith("DUALWRITE_") and k not in KNOWN_ENV}
        assert not unknown, f"{name}: dualwrite reads no {unknown}"
        assert env["DUALWRITE_METADATA"] == "sampleapp.models:tables"
        assert env["DUALWRITE_METRICS_HOST"] == "0.0.0.0"  # inside the container, for Prometheus' container
        assert env["DUALWRITE_POSTGRES_URL"].split("@")[1].startswith("postgres:5432/")
        assert env["DUALWRITE_REDIS_URL"].startswith("redis://redis:6379/")
    assert env_of("app")["DUALWRITE_METRICS_PORT"] == "9464"


def _scrape_targets() -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in PROM["scrape_configs"]
    }


def test_prometheus_scrapes_what_the_processes_serve() -> None:
    targets = _scrape_targets()
    assert targets == {"dualwrite-app": ["app:9464"], "dualwrite-backfill": ["backfill:9465"]}
    _, run = dualwrite_params(SERVICES["backfill"]["command"])
    assert targets["dualwrite-backfill"] == [f"backfill:{run['metrics_port']}"]
    assert targets["dualwrite-app"] == [f"app:{env_of('app')['DUALWRITE_METRICS_PORT']}"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")}
    assert all(mounts.get(f) == "./dashboards/alerts.yml" for f in PROM["rule_files"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "./dashboards/provisioning/prometheus/prometheus.yml"


def test_the_image_copies_what_exists_and_runs_unprivileged() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip()]
    copies = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ")]
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
    assert any(ln.startswith("ENV PYTHONPATH=/src/deploy") for ln in lines)  # sampleapp importable
    assert (DEPLOY / "sampleapp" / "wsgi.py").is_file()
    assert any(re.match(r"USER (?!root)", ln) for ln in lines)


def _unit() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    section = ""
    for raw in (DEPLOY / "systemd" / "dualwrite-backfill.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
        else:
            key, _, value = line.partition("=")
            out[section][key] = value
    return out


def test_systemd_unit_runs_the_daemon_and_stops_it_gently() -> None:
    unit = _unit()
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/dualwrite")
    cmd, params = dualwrite_params(["dualwrite", *argv[1:]])
    assert cmd == "dualwrite backfill run" and params["daemon"] is True and params["metrics_port"] is not None
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 60
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    example = (DEPLOY / "systemd" / "dualwrite.env.example").read_text()
    names = {ln.split("=")[0] for ln in example.splitlines() if ln and not ln.startswith("#")}
    assert {n for n in names if n.startswith("DUALWRITE_")} <= KNOWN_ENV


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package 'systemd')")
    exe = shutil.which("dualwrite")
    if exe is None:
        pytest.skip("the dualwrite console script is not installed")
    text = (DEPLOY / "systemd" / "dualwrite-backfill.service").read_text()
    unit = tmp_path / "dualwrite-backfill.service"
    unit.write_text(text.replace("/opt/dualwrite/bin/dualwrite", exe))  # where this machine has it
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


def test_commands_checker_refuses_what_is_not_real() -> None:
    import click

    with pytest.raises(click.UsageError):
        dualwrite_params(["dualwrite", "backfill", "run", "--metrics-prot", "9465"])
    with pytest.raises(AssertionError):
        dualwrite_params(["dualwrite", "backfil", "run"])
    with pytest.raises(AssertionError):
        gunicorn_args(["gunicorn", "--wrokers", "2", "sampleapp.wsgi:app"])


def _services_using(image_key: str) -> list[str]:
    return [n for n, s in SERVICES.items() if isinstance(s.get("build"), dict) and image_key in str(s["build"])]


def test_anchor_shared_by_our_services() -> None:
    assert sorted(_services_using("deploy/Dockerfile")) == sorted(OURS)
    first: Any = SERVICES["init"]["image"]
    assert all(SERVICES[n]["image"] == first for n in OURS)
