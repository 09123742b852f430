"""The gate never passes on thin evidence (issue 15): each case that used to pass now says FAIL and why.

- backfill_complete counts every captured table, not only those a backfill started;
- replay_lag fails with no replay group, and counts entries delivered but unacknowledged (pending), also
  where Redis gives no `lag` field (6.2, or 7 after a deletion: the ids decide);
- shadow_mismatch_rate needs a minimum number of comparisons by default, counted (with the mismatches)
  since the last clean verify, so a clean verify reopens the gate without `shadow reset`;
- thresholds that are nan, infinite or negative are refused with one line (exit 2).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from dualwrite.cutover.gate import GateConfig, backfill_complete, check, replay_lag, shadow_mismatch_rate
from dualwrite.errors import ConfigError
from dualwrite.redis_keys import shadow_counts_key, stream_key
from dualwrite.stream.replay import Replayer
from dualwrite.verify.verifier import verify_backends
from tests.conftest import connection_args
from tests.cutover.test_cutover import _mark_backfill
from tests.shadow.helpers import TABLES, catalog, items, writer


def test_backfill_complete_names_the_tables_never_copied(settings) -> None:  # type: ignore[no-untyped-def]
    with writer(settings, phase="dual_write") as dw:
        _mark_backfill(dw)  # both tables done ...
        with dw.backends.postgres.begin() as conn:  # ... then one checkpoint gone: that table was never copied
            conn.exec_driver_sql("DELETE FROM _dw_backfill_checkpoints WHERE tbl = 'sh_pairs'")
        cond = backfill_complete(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and cond.value == "1/2", cond
        assert cond.detail == "not done: sh_pairs (1 never copied)", cond.detail
        gate = check(dw.backends, dw.tables)
        assert gate.target == "shadow" and "FAIL backfill_complete" in "\n".join(c.line() for c in gate.conditions)


def test_replay_lag_fails_without_a_replay_group(settings) -> None:  # type: ignore[no-untyped-def]
    with writer(settings, phase="dual_write") as dw:
        cond = replay_lag(dw.backends, dw.tables, GateConfig())  # no stream at all
        assert not cond.ok and "no replay group" in cond.detail, cond
        dw.execute(insert(items).values(id=1, name="a", amount=1.0))
        dw.start_relay()  # the stream exists now, still without a group
        dw.stop_relay()
        assert dw.backends.redis.xlen(stream_key(settings.namespace)) == 1
        cond = replay_lag(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "no replay group on the change stream" in cond.detail, cond


def _delivered_not_acked(dw, n: int) -> None:  # type: ignore[no-untyped-def]
    """n events published, read by the replay group's consumer, never acknowledged (it died)."""
    for i in range(n):
        dw.execute(insert(items).values(id=100 + i, name=f"p{i}", amount=1.0))
    dw.start_relay()
    dw.stop_relay()
    replayer = Replayer(dw.backends, dw.tables)
    replayer.ensure_group()
    key = stream_key(dw.backends.settings.namespace)
    got = dw.backends.redis.xreadgroup(replayer.group, "dead-consumer", {key: ">"}, count=n)
    assert len(got[0][1]) == n


def test_replay_lag_counts_pending_entries(settings) -> None:  # type: ignore[no-untyped-def]
    with writer(settings, phase="dual_write") as dw:
        _delivered_not_acked(dw, 5)
        # Redis 7 says lag 0 here (all delivered): the pending ones are not applied all the same.
        cond = replay_lag(dw.backends, dw.tables, GateConfig(max_replay_lag=2))
        assert not cond.ok and cond.value == 5, cond
        assert "0 undelivered + 5 pending" in cond.detail, cond.detail


def test_replay_lag_without_a_lag_field_uses_the_ids_and_pending(settings) -> None:  # type: ignore[no-untyped-def]
    """Redis 6.2 has no `lag` in XINFO GROUPS; Redis 7 gives nil after an XDEL. Both take the same path:
    undelivered from last-delivered-id against the stream's top, plus XPENDING's count."""
    with writer(settings, phase="dual_write") as dw:
        _delivered_not_acked(dw, 3)
        key = stream_key(settings.namespace)
        for i in range(4):  # 4 more published, not delivered
            dw.execute(insert(items).values(id=200 + i, name=f"u{i}", amount=1.0))
        dw.start_relay()
        dw.stop_relay()
        undelivered = dw.backends.redis.xrange(key, min="(3-0", count=1)[0][0]
        dw.backends.redis.xdel(key, undelivered)  # a hole after last-delivered-id: Redis 7 cannot say the lag either
        (group,) = dw.backends.redis.xinfo_groups(key)
        assert group.get("lag") is None, group
        cond = replay_lag(dw.backends, dw.tables, GateConfig(max_replay_lag=5))
        assert not cond.ok and cond.value == 6 and "3 undelivered + 3 pending" in cond.detail, cond


def test_shadow_rate_needs_comparisons_by_default(settings) -> None:  # type: ignore[no-untyped-def]
    with writer(settings, phase="shadow") as dw:
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "0 mismatch(es) in 0 comparison(s)" in cond.detail, cond
        assert "need >= 100: 100 more to go" in cond.detail, cond.detail
        dw.backends.redis.hincrby(shadow_counts_key(settings.namespace), "match", 99)
        assert not shadow_mismatch_rate(dw.backends, dw.tables, GateConfig()).ok
        dw.backends.redis.hincrby(shadow_counts_key(settings.namespace), "match", 1)
        assert shadow_mismatch_rate(dw.backends, dw.tables, GateConfig()).ok


def test_a_clean_verify_opens_a_new_shadow_window(settings) -> None:  # type: ignore[no-untyped-def]
    """Mismatches before a clean verify (fixed since) no longer count; comparisons after it must."""
    key = shadow_counts_key(settings.namespace)
    with writer(settings, phase="shadow") as dw:
        dw.backends.redis.hset(key, mapping={"match": 400, "mismatch": 5})
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "5 mismatch(es) in 405 comparison(s)" in cond.detail, cond
        assert verify_backends(dw.backends, TABLES).clean
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "0 mismatch(es) in 0 comparison(s) since the clean verify" in cond.detail, cond
        dw.backends.redis.hincrby(key, "match", 150)
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert cond.ok and "0 mismatch(es) in 150 comparison(s)" in cond.detail, cond
        dw.backends.redis.hincrby(key, "mismatch", 1)  # a new mismatch after the verify counts
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "1 mismatch(es) in 151" in cond.detail, cond
        dw.backends.redis.delete(key)  # `shadow reset`: counted from zero again, not negative
        dw.backends.redis.hincrby(key, "match", 120)
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert cond.ok and "0 mismatch(es) in 120 comparison(s)" in cond.detail, cond


def test_a_verify_with_differences_keeps_the_old_window(settings) -> None:  # type: ignore[no-untyped-def]
    key = shadow_counts_key(settings.namespace)
    with writer(settings, phase="shadow") as dw:
        dw.backends.redis.hset(key, mapping={"match": 400, "mismatch": 5})
        with dw.backends.sqlite.begin() as conn:  # a row only SQLite has: verify is not clean
            conn.execute(insert(items).values(id=7, name="only here", amount=1.0))
        assert not verify_backends(dw.backends, TABLES).clean
        cond = shadow_mismatch_rate(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "5 mismatch(es) in 405" in cond.detail, cond


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_mismatch_rate", float("nan")),
        ("max_mismatch_rate", float("inf")),
        ("max_mismatch_rate", -0.1),
        ("max_mismatch_rate", 1.5),
        ("min_comparisons", -1),
        ("max_replay_lag", -5),
        ("verify_max_age_seconds", float("nan")),
    ],
)
def test_thresholds_must_be_finite_and_in_range(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match="must be a finite number"):
        GateConfig(**{field: value})


@pytest.mark.parametrize(
    "flags", [["--max-mismatch-rate", "nan"], ["--max-mismatch-rate", "inf"], ["--min-comparisons", "-1"]]
)
def test_the_cli_refuses_a_vacuous_threshold_in_one_line(settings, flags: list[str]) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.cli.main import main

    writer(settings, phase="shadow").close()
    args = [*connection_args(settings), "--metadata", "tests.shadow.helpers:catalog", *flags]
    for command in (["cutover", "check"], ["cutover", "flip"]):
        res = CliRunner().invoke(main, [*command, *args])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {flags[0]} ") and "finite" in lines[0], res.output
    assert catalog()  # the phase did not move
