"""A private Prometheus for the dashboard proofs: random loopback port, 1 s scrapes, our alert rules,
tmp config and storage; and the panel expressions of every dashboard with Grafana's macros substituted."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dashboards import build
from tests.servers import free_port

PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).resolve().parents[2]

# Grafana macros -> values for a 1 s scrape interval (Grafana's $__rate_interval would be 4 s; 5 s is safer).
MACROS = {
    "$__rate_interval": "5s",
    "$__interval": "5s",
    "$__range": "1m",
    "$job": ".*",
    "$instance": ".*",
}


def substitute(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"unsubstituted macro in {expr}"
    return expr


def panel_targets() -> list[tuple[str, str]]:
    """(test id, expression) for every target of every panel, and every annotation query, of every dashboard."""
    out = []
    for name, fn in build.DASHBOARDS.items():
        dash = fn()
        for p in dash["panels"]:
            for t in p.get("targets", []):
                out.append((f"{name}:{p['id']}:{p['title']}:{t['refId']}", t["expr"]))
        for a in dash["annotations"]["list"]:
            if "expr" in a:
                out.append((f"{name}:annotation:{a['name']}", a["expr"]))
    return out


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.base}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))
        assert data["resultType"] == "matrix", data
        return data["result"]

    def scrapes(self, job: str = "dualwrite") -> int:
        res = self.query(f'count_over_time(up{{job="{job}"}}[5m])')
        return int(float(res[0]["value"][1])) if res else 0


@contextmanager
def running_prometheus(
    tmp: Path,
    targets: list[str] | None = None,
    job: str = "dualwrite",
    scrape_configs: list[dict[str, Any]] | None = None,
) -> Iterator[Prom]:
    """Prometheus scraping `targets` as `job` (or the given scrape_configs) every second; killed and its files
    removed on exit."""
    assert PROMETHEUS is not None
    if scrape_configs is None:
        scrape_configs = [{"job_name": job, "static_configs": [{"targets": targets or []}]}]
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dashboards" / "alerts.yml", tmp / "alerts.yml")
    (tmp / "prometheus.yml").write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                "rule_files": [str(tmp / "alerts.yml")],
                "scrape_configs": scrape_configs,
            }
        )
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prom(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.1)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
