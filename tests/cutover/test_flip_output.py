"""What the operator sees of a flip (issue 15): `--dry-run` prints the steps and the gate and changes
nothing; every flip prints the routing after it and the next step; a waiting `flip --postpone` is armed in
`dualwrite status` until cancelled; `status` names the fence's live members."""

from __future__ import annotations

import json
import re
import threading
import time

from click.testing import CliRunner

from dualwrite.cli.main import main
from dualwrite.cutover.flip import flip_postponed
from dualwrite.testing import registered
from tests.conftest import connection_args
from tests.shadow.helpers import writer

METADATA = ["--metadata", "tests.shadow.helpers:catalog"]


def _run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def test_dry_run_prints_the_fenced_steps_and_changes_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="shadow")  # a live member: the plan counts it
    try:
        time.sleep(0.3)
        res = _run("cutover", "flip", *connection_args(settings), *METADATA, "--dry-run")
        assert res.exit_code == 0, res.output
        out = res.output
        assert "1. check the gate for shadow -> postgres_reads" in out, out
        assert "2. raise the write fence: each of the 1 live instance(s)" in out and "at most 500 ms" in out, out
        assert "lift the fence" in out and "past the bound: lift the fence, keep shadow" in out, out
        assert "gate shadow -> postgres_reads: FAIL" in out and "dry run: would refuse" in out, out
        assert "routing: primary sqlite; postgres written too; reads from sqlite" in out, out
        assert dw.phases.current(fresh=True).name == "shadow"
        assert dw.phases.history()[-1]["to"] == "shadow"  # nothing recorded
    finally:
        dw.close()


def test_a_flip_prints_the_routing_after_it_and_the_next_step(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = registered(writer(settings, phase="sqlite"))  # the application on DualWriter: the gate wants one live
    report = tmp_path / "flip.json"
    try:
        res = _run("cutover", "flip", *connection_args(settings), *METADATA, "--report", str(report))
    finally:
        app.close()
    assert res.exit_code == 0, res.output
    assert "moved: sqlite -> dual_write" in res.output, res.output
    assert "routing: primary sqlite; postgres written too; reads from sqlite; shadow reads off" in res.output
    # each command it names runs as printed: the tables flag carried over
    flag = " ".join(METADATA)
    assert f"next: copy the history (`dualwrite backfill run {flag} --daemon`" in res.output, res.output
    assert f"then `dualwrite cutover flip {flag}` to shadow" in res.output, res.output
    doc = json.loads(report.read_text())
    assert doc["moved"] and doc["phase"] == "dual_write" and doc["fence"] is None  # no fence for this move
    assert doc["routing"].startswith("routing: primary sqlite") and doc["next"].startswith("next:")
    assert f"`dualwrite cutover flip {flag}`" in doc["next"] and doc["next_steps"] == [], doc


def test_a_postponed_flip_is_armed_in_status_until_cancelled(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="dual_write")  # backfill not done: the flip waits
    conn = connection_args(settings)
    result = {}
    th = threading.Thread(
        target=lambda: result.setdefault(
            "out", flip_postponed(dw.backends, dw.tables, poll=0.1, echo=lambda _l: None, deadline=60)
        )
    )
    try:
        th.start()
        deadline = time.monotonic() + 20
        while True:
            res = _run("status", *conn, *METADATA)
            if "armed: flip --postpone dual_write -> shadow" in res.output:
                break
            assert time.monotonic() < deadline, res.output
            time.sleep(0.1)
        assert "waiting for backfill_complete" in res.output and "cutover cancel" in res.output, res.output
        assert "fence: 1 live writer instance(s)" in res.output, res.output
        assert _run("cutover", "cancel", *conn).exit_code == 0
        th.join(20)
        assert not th.is_alive() and result["out"].message == "cancelled"
        res = _run("status", *conn, *METADATA)
        assert "armed:" not in res.output, res.output
    finally:
        dw.backends.redis.set(f"{settings.namespace}:cutover:cancel", 1)
        th.join(20)
        dw.close()


def test_check_is_open_when_only_the_outbox_lags_which_the_fence_judges(settings) -> None:  # type: ignore[no-untyped-def]
    """Under live writes a few events are always unpublished for a moment: `cutover check` says so, and
    that the flip would go to the fence (where no write races the outbox) rather than fail."""
    from sqlalchemy import insert

    from dualwrite.redis_keys import shadow_counts_key
    from dualwrite.stream.replay import Replayer
    from dualwrite.verify.verifier import verify_backends
    from tests.cutover.test_cutover import _mark_backfill
    from tests.shadow.helpers import TABLES, items

    dw = writer(settings, phase="shadow")
    try:
        _mark_backfill(dw)
        Replayer(dw.backends, dw.tables).ensure_group()
        assert verify_backends(dw.backends, TABLES).clean
        dw.backends.redis.hincrby(shadow_counts_key(settings.namespace), "match", 100)
        dw.execute(insert(items).values(id=1, name="unpublished", amount=1.0))  # no relay runs here
        res = _run("cutover", "check", *connection_args(settings), *METADATA)
        assert res.exit_code == 0, res.output
        assert "gate shadow -> postgres_reads: OPEN (the outbox is judged under the write fence)" in res.output
        assert re.search(r"^FAIL +outbox_drained +1 +1 unpublished event\(s\)", res.output, re.M), res.output
    finally:
        dw.close()
