"""The /metrics endpoint: prometheus-client's WSGI app (gzip, OpenMetrics by content negotiation) with
/health beside it, on the address it is told (DUALWRITE_METRICS_HOST or --metrics-host; loopback by
default), and a one-line error for an address it cannot listen on."""

from __future__ import annotations

import gzip
import socket
import sqlite3
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from dualwrite import metrics
from dualwrite.cli import main
from tests.conftest import connection_args


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def endpoint():  # type: ignore[no-untyped-def]
    state = {"ok": True}
    server = metrics.serve(0, "127.0.0.2", health=lambda: (state["ok"], "ok: fine\n" if state["ok"] else "down\n"))
    yield server, state
    server.close()


def test_metrics_text_gzip_and_openmetrics(endpoint) -> None:  # type: ignore[no-untyped-def]
    server, _ = endpoint
    assert server.host == "127.0.0.2" and server.url == f"http://127.0.0.2:{server.port}"
    metrics.OUTBOX_BACKLOG.set(3)
    code, headers, body = fetch(f"{server.url}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"dualwrite_outbox_backlog 3.0" in body and b'dualwrite_phase{phase="shadow"}' in body
    code, headers, zipped = fetch(f"{server.url}/metrics", **{"Accept-Encoding": "gzip"})
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert b"dualwrite_outbox_backlog 3.0" in gzip.decompress(zipped) and len(zipped) < len(body)
    code, headers, om = fetch(f"{server.url}/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert code == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.rstrip().endswith(b"# EOF")
    code, _, filtered = fetch(f"{server.url}/metrics?name[]=dualwrite_outbox_backlog")
    assert code == 200 and b"dualwrite_outbox_backlog 3.0" in filtered and b"dualwrite_phase" not in filtered


def test_health_and_unknown_paths(endpoint) -> None:  # type: ignore[no-untyped-def]
    server, state = endpoint
    assert fetch(f"{server.url}/health")[::2] == (200, b"ok: fine\n")
    state["ok"] = False
    assert fetch(f"{server.url}/health")[::2] == (503, b"down\n")
    assert fetch(f"{server.url}/nothing")[0] == 404


def test_host_from_the_environment_and_loopback_by_default(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(metrics.HOST_ENV, raising=False)
    server = metrics.serve(0)
    try:
        assert server.host == "127.0.0.1"
    finally:
        server.close()
    monkeypatch.setenv(metrics.HOST_ENV, "127.0.0.3")
    server = metrics.serve(0)
    try:
        assert server.host == "127.0.0.3" and fetch(f"{server.url}/metrics")[0] == 200
        with pytest.raises(OSError):  # not on 127.0.0.1: only the address it was given
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    finally:
        server.close()


def test_an_address_in_use_is_one_line() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.2", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as err:
            metrics.serve(port, "127.0.0.2")
        assert str(err.value).startswith(f"cannot listen on 127.0.0.2:{port} (")
        assert "\n" not in str(err.value)
    finally:
        holder.close()


def test_wsgi_app_mounted_anywhere_serves_the_metrics() -> None:
    app = metrics.wsgi_app()
    seen: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "HTTP_ACCEPT_ENCODING": ""}
    body = b"".join(app(environ, lambda status, _headers: seen.append(status)))
    assert seen == ["200 OK"] and b"dualwrite_phase" in body


def test_backfill_run_with_an_unusable_metrics_address_exits_2(settings) -> None:  # type: ignore[no-untyped-def]
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    holder = socket.socket()
    holder.bind(("127.0.0.2", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        args = ["backfill", "run", *connection_args(settings), "--reflect", "--no-replay"]
        args += ["--metrics-host", "127.0.0.2", "--metrics-port", str(port)]
        r = CliRunner().invoke(main, args, env={"DUALWRITE_METRICS_HOST": None})
    finally:
        holder.close()
    assert r.exit_code == 2, r.output
    assert f"cannot listen on 127.0.0.2:{port}" in r.output and "Traceback" not in r.output
