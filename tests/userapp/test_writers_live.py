"""The flip to dual_write waits for the application on DualWriter (gate condition writers_live). An
application that still writes its SQLite file on its own engine is captured by no one: every write it made
after a table's copy would be missing from Postgres, and only a later verify would say so. Only a
DualWriter's heartbeat in the write fence counts: not the backfill daemon, not the CLI, not one that died."""

from __future__ import annotations

import time
from pathlib import Path

from dualwrite.cutover.gate import GateConfig, check, replay_lag
from dualwrite.engines import Backends
from dualwrite.fence import EXPIRY_SECONDS, live_members
from dualwrite.redis_keys import fence_instances_key
from dualwrite.settings import Settings
from tests.userapp.fleet import Fleet
from tests.userapp.operator import (
    METADATA,
    cli_json,
    condition,
    dualwrite,
    move,
    prepare,
    printed_steps,
    start_daemon,
    stop_all,
    wait,
)
from tests.userapp.writer import tables

RATE = 20
APP = {"rate": RATE, "population": 20, "documents": 0.05}


def test_the_flip_waits_for_the_application_on_dualwriter(settings: Settings, tmp_path: Path) -> None:
    conn = prepare(settings)
    fleet, backends, daemon = Fleet(tmp_path), Backends(settings), None
    try:
        # the application before dualwrite, writing its SQLite file, with the daemon and the CLI beside it
        fleet.start(settings, count=1, plain=True, **APP)
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "100")
        fleet.wait_committed(10)
        wait("the daemon's replay group", lambda: replay_lag(backends, tables(), GateConfig()).value is not None)

        refused = cli_json(conn, tmp_path, "refused", "cutover", "flip")
        assert refused["exit"] == 1 and not refused["moved"] and refused["phase"] == "sqlite", refused
        found = condition(refused, "writers_live")
        assert not found["ok"] and found["value"] == 0, found
        assert "deploy the application on DualWriter first" in found["detail"], found
        assert "writers_live" in refused["message"], refused
        steps = refused["next_steps"]
        assert [s.split("  #")[0] for s in steps] == [
            "dualwrite status",
            f"dualwrite cutover check {' '.join(METADATA)}",
        ]
        # the step it names shows the fence's members: none, though the daemon runs
        assert "fence: 0 live writer instance(s)" in dualwrite("status", *conn, *METADATA).stdout
        assert backends.phases.current(fresh=True).name == "sqlite"

        # the application moves onto the adapter (restarted under its name, in its own process): the flip goes
        fleet.stop()
        fleet.start(settings, count=1, first_index=1, **APP)
        wait("the DualWriter's heartbeat", lambda: live_members(backends.redis, settings.namespace), 30)
        moved = move(conn, tmp_path, "dual_write", "cutover", "flip")
        assert condition(moved, "writers_live")["ok"] and condition(moved, "writers_live")["value"] == 1, moved
        fleet.wait_committed(10, more_than=fleet.committed())
        fleet.check_alive()
    finally:
        stop_all(fleet, daemon, backends)


def test_a_dead_dualwriter_does_not_count(settings: Settings, tmp_path: Path) -> None:
    conn = prepare(settings)
    fleet, backends = Fleet(tmp_path), Backends(settings)
    try:
        (writer,) = fleet.start(settings, count=1, **APP)
        (member,) = wait("the DualWriter's heartbeat", lambda: live_members(backends.redis, settings.namespace), 30)
        assert check(backends, tables(), "dual_write").ok  # while it lives, it counts
        writer.popen.kill()  # SIGKILL: it never leaves the fence's set; its heartbeat stops
        writer.popen.wait()
        killed_at = time.time()
        wait("the heartbeat to expire", lambda: not live_members(backends.redis, settings.namespace), 10, 0.1)
        assert time.time() - killed_at <= EXPIRY_SECONDS + 1.5
        assert backends.redis.zscore(fence_instances_key(settings.namespace), member) is not None  # still listed

        gate = check(backends, tables(), "dual_write")
        assert [c.name for c in gate.failing] == ["writers_live"], gate.to_dict()
        refused = cli_json(conn, tmp_path, "refused", "cutover", "flip")
        assert refused["exit"] == 1 and condition(refused, "writers_live")["value"] == 0, refused

        # the operator who knows why (the application stopped on purpose) overrides, as for any condition
        forced = ("cutover", "flip", "--force", "--reason", "maintenance window: the application is stopped")
        out = dualwrite(*forced, *conn, *METADATA)
        assert out.returncode == 0, out.stdout + out.stderr
        assert backends.phases.current(fresh=True).name == "dual_write"
        assert printed_steps(out.stdout)[0].startswith("dualwrite backfill run"), out.stdout
    finally:
        stop_all(fleet, None, backends)
