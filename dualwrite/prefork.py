"""Pre-forking servers (gunicorn with several workers): every worker's metrics on one endpoint.

    gunicorn -c python:dualwrite.prefork --workers 4 --bind 0.0.0.0:8000 myapp.wsgi:app
    # or in your own gunicorn.conf.py:
    from dualwrite.prefork import child_exit, on_exit, on_starting, when_ready  # noqa: F401

Each worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess
mode); the master serves them, summed, with /health, on DUALWRITE_METRICS_HOST:DUALWRITE_METRICS_PORT
(127.0.0.1:9464 unless set). The application may also mount `dualwrite.metrics.wsgi_app()` at /metrics:
in this mode any worker's answer sums every worker too.

The mode must be chosen before `dualwrite.metrics` is first imported in any process, so this module
imports nothing of dualwrite when it loads: it sets PROMETHEUS_MULTIPROC_DIR to a fresh folder of its
own (removed at exit) unless the environment names one. A folder named by the environment must be
dedicated to this server: stale metric files of an earlier run are removed from it at start (only files
named as prometheus-client names them). Create the DualWriter in the worker (lazily, or in post_fork),
never in the master before the fork: connections must not be shared across processes.

Other pre-forking servers (uvicorn --workers, uWSGI): set PROMETHEUS_MULTIPROC_DIR to an empty folder
in their environment and mount `dualwrite.metrics.wsgi_app()` / `asgi_app()` in the application.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client's file names: counter_<pid>.db, histogram_<pid>.db, gauge_<mode>_<pid>.db, ...
_METRIC_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_\d+\.db$")

_own_dir: str | None = None
if not os.environ.get(ENV):
    _own_dir = tempfile.mkdtemp(prefix="dualwrite-metrics-")
    os.environ[ENV] = _own_dir


def on_starting(server: Any) -> None:
    """Master, before any worker: start from an empty multiprocess folder (a restart must not add the
    previous run's counters)."""
    folder = Path(os.environ[ENV])
    folder.mkdir(parents=True, exist_ok=True)
    stale = [p for p in folder.iterdir() if _METRIC_FILE.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    server.log.info("dualwrite: multiprocess metrics in %s (%d stale file(s) removed)", folder, len(stale))


def when_ready(server: Any) -> None:
    """Master: serve /metrics (every worker's, summed) and /health."""
    from dualwrite import metrics

    try:
        server.dualwrite_metrics = metrics.serve()
    except (OSError, ValueError) as exc:
        why = metrics.listen_error(exc)
        server.log.error("dualwrite: %s", why)
        server.halt(why, 2)
        return
    server.log.info("dualwrite: serving every worker's /metrics and /health on %s", server.dualwrite_metrics.url)


def child_exit(server: Any, worker: Any) -> None:
    """Master: a worker is gone; its live gauges (phase, backlog, ...) stop counting, its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    endpoint = getattr(server, "dualwrite_metrics", None)
    if endpoint is not None:
        endpoint.close()
    if _own_dir is not None and os.environ.get(ENV) == _own_dir:
        shutil.rmtree(_own_dir, ignore_errors=True)
