"""Phase-change hooks: a shell command and an http(s) URL (a real loopback HTTP server), several at once;
a failing hook is reported but never reverts the change."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dualwrite.cutover.flip import flip, rollback
from tests.shadow.helpers import writer


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _server() -> tuple[ThreadingHTTPServer, type[_Recorder]]:
    handler = type("Recorder", (_Recorder,), {"received": [], "status": 204})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, handler


def test_url_and_command_hooks_run_on_flip_and_rollback(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv, rec = _server()
    url = f"http://127.0.0.1:{srv.server_address[1]}/phase"
    out_file = tmp_path / "hook.txt"
    dw = writer(settings, phase="dual_write")
    try:
        out = flip(
            dw.backends, dw.tables, force=True, reason="hook test", hook=[url, f'echo "$DUALWRITE_TO" >> {out_file}']
        )
        assert out.moved and out.hook_rc == 0
        out = rollback(dw.backends, dw.tables, to="dual_write", reason="back", hook=(url,))
        assert out.current == "dual_write" and out.hook_rc == 0
        assert [(r["from"], r["to"], r["reason"], r["forced"]) for r in rec.received] == [
            ("dual_write", "shadow", "hook test", True),
            ("shadow", "dual_write", "back", False),
        ]
        assert rec.received[0]["type"] == "application/json"
        assert rec.received[0]["namespace"] == settings.namespace and rec.received[0]["at"]
        assert out_file.read_text().split() == ["shadow"]
    finally:
        srv.shutdown()
        dw.close()


def test_failing_hooks_are_reported_and_the_phase_still_moves(settings) -> None:  # type: ignore[no-untyped-def]
    srv, rec = _server()
    rec.status = 503
    url = f"http://127.0.0.1:{srv.server_address[1]}/phase"
    srv2 = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    dead = f"http://127.0.0.1:{srv2.server_address[1]}/"  # bound, never served, then closed: refuses
    srv2.server_close()
    dw = writer(settings, phase="dual_write")
    try:
        out = flip(dw.backends, dw.tables, force=True, reason="x", hook=[url])
        assert out.moved and out.hook_rc == 503 and len(rec.received) == 1
        out = rollback(dw.backends, dw.tables, to="dual_write", reason="y", hook=[dead, "exit 3"])
        assert out.current == "dual_write" and out.hook_rc == -1
        assert dw.phases.current(fresh=True).name == "dual_write"
    finally:
        srv.shutdown()
        dw.close()
