"""Real processes of the deployment for the tests: the sample application under gunicorn (several workers,
prometheus-client's multiprocess mode through dualwrite.prefork) and `dualwrite backfill run --daemon`,
each on its own loopback address; plus a small HTTP client and a metrics scraper."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dualwrite.settings import Settings
from tests.conftest import connection_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METADATA = "sampleapp.models:tables"
GUNICORN = shutil.which("gunicorn")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a deployed process gets: DUALWRITE_* for these settings, small pools, the sample
    app importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUALWRITE_", "PROMETHEUS_MULTIPROC"))}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(DEPLOY)]),
        **connection_env(settings),
        "DUALWRITE_METADATA": METADATA,
        "DUALWRITE_POOL_SIZE": "2",
        "DUALWRITE_MAX_OVERFLOW": "2",
    }
    return env | extra


def http(method: str, url: str, doc: Any = None, timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    """One request on its own connection (so a pre-forking server hands it to any worker)."""
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body, code, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        body, code, headers = exc.read(), exc.code, dict(exc.headers)
    ctype = headers.get("Content-Type", "")
    return code, headers, json.loads(body) if ctype.startswith("application/json") else body.decode()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    code, _, text = http("GET", url)
    assert code == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lb), v in samples.items() if n == name and want <= set(lb))


def wait_until(
    pred: Any, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
) -> Any:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}\n{log.read_text()[-4000:] if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


@dataclass
class App:
    proc: subprocess.Popen  # type: ignore[type-arg]
    url: str
    metrics_url: str
    log: Path

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}


@contextmanager
def gunicorn_app(
    settings: Settings, tmp: Path, *, host: str, port: int, metrics_port: int, workers: int = 3, **env: str
) -> Iterator[App]:
    """The sample application under gunicorn: `workers` processes, the app on host:port, every worker's
    metrics summed by the master on host:metrics_port."""
    if GUNICORN is None:
        pytest.skip("gunicorn not installed (the dev extra installs it)")
    from gunicorn.config import KNOWN_SETTINGS

    tmp.mkdir(parents=True, exist_ok=True)
    argv = [GUNICORN, "-c", "python:dualwrite.prefork", "--workers", str(workers), "--bind", f"{host}:{port}"]
    argv += ["--graceful-timeout", "10", "--pid", str(tmp / "gunicorn.pid")]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):  # gunicorn >= 24: no shared ~/.gunicorn
        argv.append("--no-control-socket")
    argv.append("sampleapp.wsgi:app")
    full_env = settings_env(settings, DUALWRITE_METRICS_HOST=host, DUALWRITE_METRICS_PORT=str(metrics_port), **env)
    log = tmp / "gunicorn.log"
    with log.open("a") as out:
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    app = App(proc, f"http://{host}:{port}", f"http://{host}:{metrics_port}", log)
    try:
        wait_until(lambda: _answers(f"{app.url}/health"), 30, "gunicorn app /health", proc, log)
        wait_until(lambda: _answers(f"{app.metrics_url}/health"), 10, "gunicorn master /metrics", proc, log)
        yield app
    finally:
        stop(proc)


@contextmanager
def backfill_daemon(
    settings: Settings, tmp: Path, *, host: str, port: int, name: str = "w1", extra: tuple[str, ...] = ()
) -> Iterator[Any]:
    """`dualwrite backfill run --daemon` (and `extra` flags) with its /metrics on host:port."""
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "dualwrite", "backfill", "run", "--metadata", METADATA, "--daemon"]
    argv += ["--consumer", name, "--metrics-host", host, "--metrics-port", str(port), "--chunk-size", "200"]
    argv += ["--rejects", str(tmp / "rejects.jsonl"), "--report", str(tmp / "report.json"), *extra]
    log = tmp / "backfill.log"
    with log.open("a") as out:
        proc = subprocess.Popen(argv, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        wait_until(lambda: _answers(f"http://{host}:{port}/health"), 30, "backfill /health", proc, log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """The operator's CLI in its own process (settings from the environment, as on a server)."""
    return subprocess.run(
        [sys.executable, "-m", "dualwrite", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
