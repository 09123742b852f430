"""The cutover gate: the conditions that must hold before the phase moves forward, each with its value.

| condition | passes when |
|---|---|
| bookkeeping | dualwrite's own tables (`_dw_meta`, `_dw_outbox`, `_dw_versions`, ...) are on both sides (`dualwrite
  init` creates them): checked before every forward move, so a flip never half-records a phase |
| writers_live | (-> dual_write only) at least one DualWriter heartbeats in the namespace's write fence
  (`{ns}:fence:instances`, fence.live_members): an application still writing SQLite without DualWriter is
  captured by no one, so its writes after a table's copy would be missing from Postgres. Only DualWriter
  registers (the backfill daemon, replayer and CLI do not). Not required later: by then the application
  has been seen on DualWriter, and a maintenance window with it stopped (no member) is a legitimate time to
  flip. Blind spot: a partial deploy (some instances on DualWriter, some not) passes; only verify sees it |
| outbox_drained | no `_dw_outbox` row on the primary above the stream's top seq |
| dead_letters_empty | the dead-letter stream holds no event |
| verify_clean | every captured table's last `dualwrite verify` (kept in Redis `{ns}:verify:last`; a verify of some
  tables keeps the others' results) found no difference, and none was never verified |
| shadow_mismatch_rate | at least `min_comparisons` (default 100) comparisons, and mismatches / compared <= the
  threshold, both counted since the last clean verify (`{ns}:shadow:counts` less the snapshot that verify took) |
| backfill_complete | every captured table (the application's Tables) has a finished copy (`_dw_backfill_checkpoints`
  status 'done'); a table with no checkpoint at all is named as never copied |
| replay_lag | every replay group's entries not yet delivered plus those delivered but unacknowledged <= the bound,
  on Redis 6.2 (no `lag` field) and 7 alike; fails when the stream has no replay group (nothing heals it) |

Thresholds must be finite and in range (GateConfig refuses nan, inf and negatives with one line).

Which conditions apply depends on the target phase (REQUIRED). Each check sets
`dualwrite_gate_condition{condition}` to 1 or 0 (writers_live too, in every phase: 0 after dual_write
says only that no DualWriter runs now). `export` evaluates all of them (and the next flip's
verdict, `dualwrite_gate_open`, and the phase): the backfill daemon calls it every few seconds while it
serves /metrics, so the dashboards show the gate from a process Prometheus scrapes (a CLI run is gone
before the next scrape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select

from dualwrite import metrics
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.bookkeeping import bookkeeping_gaps, gaps_text, outbox
from dualwrite.engines import Backends
from dualwrite.errors import ConfigError, first_line
from dualwrite.fence import EXPIRY_SECONDS, live_members
from dualwrite.redis_keys import dead_letter_key, read_shadow_counts, stream_key
from dualwrite.stream.protocol import group_lag, top_seq
from dualwrite.tables import Tables
from dualwrite.verify.last import load_last, load_shadow_window, verify_verdict

_SAFETY = ["bookkeeping", "outbox_drained", "dead_letters_empty", "replay_lag"]
_FULL = [*_SAFETY, "backfill_complete", "verify_clean", "shadow_mismatch_rate"]
REQUIRED: dict[str, list[str]] = {
    "sqlite": [],
    "dual_write": ["bookkeeping", "writers_live"],
    "shadow": ["bookkeeping", "backfill_complete", "dead_letters_empty", "replay_lag"],
    "postgres_reads": _FULL,
    "postgres_primary": _FULL,
    "postgres": _SAFETY,
}


DEFAULT_MIN_COMPARISONS = 100
# Required only for fenced moves, and judged again under the fence (see GateResult.blocking).
JUDGED_UNDER_FENCE = ("outbox_drained",)


@dataclass
class GateConfig:
    max_mismatch_rate: float = 0.001
    min_comparisons: int = DEFAULT_MIN_COMPARISONS
    max_replay_lag: int = 1000
    verify_max_age_seconds: float | None = None

    def __post_init__(self) -> None:
        """Refuse a threshold that would make a condition vacuous (nan compares false with everything)."""
        checks: list[tuple[str, float, float, float | None]] = [
            ("--max-mismatch-rate", self.max_mismatch_rate, 0.0, 1.0),
            ("--min-comparisons", self.min_comparisons, 0, None),
            ("--max-replay-lag", self.max_replay_lag, 0, None),
        ]
        if self.verify_max_age_seconds is not None:
            checks.append(("--verify-max-age", self.verify_max_age_seconds, 0.0, None))
        for flag, value, low, high in checks:
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
                raise ConfigError(f"{flag} {value}: must be a finite number {span}")


@dataclass
class Condition:
    name: str
    ok: bool
    value: Any
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name:22} {self.value!s:>12}  {self.detail}"


@dataclass
class GateResult:
    current: str
    target: str
    conditions: list[Condition] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.conditions)

    @property
    def failing(self) -> list[Condition]:
        return [c for c in self.conditions if not c.ok]

    @property
    def blocking(self) -> list[Condition]:
        """The failing conditions a flip cannot get past. Every move that requires outbox_drained runs
        behind the write fence (cutover/fenced.py), which judges it again once no write races it: live
        writes that keep a few events unpublished for a moment do not block it."""
        return [c for c in self.failing if c.name not in JUDGED_UNDER_FENCE]

    @property
    def open(self) -> bool:
        """Whether a flip would go ahead (to the fence, where the outbox must then be drained)."""
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        fields = ("current", "target", "ok", "open")
        return {**{f: getattr(self, f) for f in fields}, "conditions": [c.__dict__ for c in self.conditions]}


def bookkeeping(backends: Backends, tables: Tables, _cfg: GateConfig) -> Condition:
    gaps = bookkeeping_gaps(backends.sqlite_read, backends.postgres, backends.settings.state_schema)
    if not gaps:
        return Condition("bookkeeping", True, 0, "dualwrite's tables are on both sides")
    detail = f"{gaps_text(gaps)} (`dualwrite init` creates them)"
    return Condition("bookkeeping", False, len(gaps), detail)


def writers_live(backends: Backends, tables: Tables, _cfg: GateConfig) -> Condition:
    """Some application instance writes through DualWriter (a fence member heartbeats): the move to
    dual_write must not start while the application writes SQLite without capture."""
    namespace = backends.settings.namespace
    n = len(live_members(backends.redis, namespace))
    if n:
        return Condition("writers_live", True, n, f"{n} live DualWriter instance(s) in namespace {namespace}")
    detail = (
        f"no live DualWriter instance in namespace {namespace} (none heartbeat in the write fence within"
        f" {EXPIRY_SECONDS:g}s): deploy the application on DualWriter first (in phase sqlite it captures"
        " every write), then flip: a write made without it after a table's copy never reaches Postgres"
    )
    return Condition("writers_live", False, 0, detail)


def outbox_drained(backends: Backends, tables: Tables, _cfg: GateConfig) -> Condition:
    primary = backends.phases.current(fresh=True).primary
    top = top_seq(backends.redis, stream_key(backends.settings.namespace))
    with backends.read_engine(primary).connect() as conn:
        n = conn.execute(select(func.count()).select_from(outbox).where(outbox.c.seq > (top or 0))).scalar() or 0
        conn.rollback()
    where = "no stream yet" if top is None else f"stream top seq {top}"
    return Condition("outbox_drained", n == 0, n, f"{n} unpublished event(s) in the {primary} outbox ({where})")


def dead_letters_empty(backends: Backends, tables: Tables, _cfg: GateConfig) -> Condition:
    n = int(backends.redis.xlen(dead_letter_key(backends.settings.namespace)))
    return Condition("dead_letters_empty", n == 0, n, f"{n} event(s) in the dead-letter stream")


def verify_clean(backends: Backends, tables: Tables, cfg: GateConfig) -> Condition:
    """Every captured table's last verify (a verify of some tables keeps the others' results: verify.last)
    found no difference; the age is the oldest of those results'."""
    last = load_last(backends.redis, backends.settings.namespace)
    if last is None:
        return Condition("verify_clean", False, None, "no verify recorded: run `dualwrite verify`")
    at, bad, never = verify_verdict(last, tables.names())
    age = (datetime.now(UTC) - datetime.fromisoformat(at)).total_seconds()
    ok = not never and not bad  # a table with fixed rows is not clean until it is verified again
    found = ([f"differences in {', '.join(bad)}"] if bad else []) + (
        [f"never verified: {', '.join(never)}"] if never else []
    )
    state = "; ".join(found) or "clean"
    detail = f"last verify {age:.0f}s ago: {state}"
    if last.get("mode") == "incremental":
        detail += f" (incremental: {last.get('touched')} key(s) changed since the full verify of {last.get('base')})"
    if ok and cfg.verify_max_age_seconds is not None and age > cfg.verify_max_age_seconds:
        ok, detail = False, detail + f" (older than {cfg.verify_max_age_seconds:.0f}s)"
    return Condition("verify_clean", ok, at, detail)


def shadow_window(client: redis.Redis, namespace: str) -> tuple[dict[str, int], str | None]:
    """The shadow counts since the last clean verify (the counts less the snapshot it took), and when
    that verify ran; all counts when there was none, or when they were reset below the snapshot."""
    counts = read_shadow_counts(client, namespace)
    window = load_shadow_window(client, namespace)
    if window is None:
        return counts, None
    base = {k: int(v) for k, v in window.get("counts", {}).items()}
    if any(counts.get(k, 0) < v for k, v in base.items()):  # `shadow reset` since: count from zero
        return counts, window.get("since")
    return {k: v - base.get(k, 0) for k, v in counts.items()}, window.get("since")


def shadow_mismatch_rate(backends: Backends, tables: Tables, cfg: GateConfig) -> Condition:
    counts, since = shadow_window(backends.redis, backends.settings.namespace)
    mism = counts.get("mismatch", 0)
    compared = mism + counts.get("match", 0)
    rate = mism / compared if compared else 0.0
    enough = compared >= cfg.min_comparisons
    ok = enough and rate <= cfg.max_mismatch_rate
    noise = counts.get("aa:mismatch", 0)
    detail = (
        f"{mism} mismatch(es) in {compared} comparison(s)"
        + (f" since the clean verify of {since}" if since else "")
        + f" (max {cfg.max_mismatch_rate:.4%}, need >= {cfg.min_comparisons}"
        + ("" if enough else f": {cfg.min_comparisons - compared} more to go")
        + f"); skipped {counts.get('skipped', 0)}, errors {counts.get('error', 0)}"
        + (f"; A/A noise {noise}" if noise else "")
    )
    return Condition("shadow_mismatch_rate", ok, round(rate, 6), detail)


def backfill_complete(backends: Backends, tables: Tables, _cfg: GateConfig) -> Condition:
    """Every captured table, not just those a backfill happened to start, has a finished copy."""
    wanted = tables.names()
    if not wanted:
        return Condition("backfill_complete", False, 0, "no captured tables given (--metadata)")
    with backends.postgres.connect() as conn:
        status = ckpt.statuses(conn)
        conn.rollback()
    pending = [t for t in wanted if status.get(t) != "done"]
    never = [t for t in pending if t not in status]
    detail = "all tables done" if not pending else f"not done: {', '.join(pending)}"
    if never:
        detail += f" ({len(never)} never copied)"
    return Condition("backfill_complete", not pending, f"{len(wanted) - len(pending)}/{len(wanted)}", detail)


def replay_lag(backends: Backends, tables: Tables, cfg: GateConfig) -> Condition:
    """Per replay group: not yet delivered + delivered but unacknowledged (a consumer that read entries
    and died holds them pending: they are not applied). protocol.group_lag computes the first from the
    ids where Redis 6.2 has no `lag` field."""
    key = stream_key(backends.settings.namespace)
    try:
        groups = backends.redis.xinfo_groups(key)
    except redis.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        groups = []
    names = [g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"]) for g in groups]
    if not names:
        return Condition(
            "replay_lag", False, None,
            "no replay group on the change stream: nothing would heal a failed apply "
            "(start `dualwrite backfill run --daemon`, which replays)",
        )  # fmt: skip
    lags = {}
    for name in names:
        undelivered, pending = group_lag(backends.redis, key, name)
        lags[name] = (undelivered + pending, undelivered, pending)
    worst_name = max(lags, key=lambda n: lags[n][0])
    worst, undelivered, pending = lags[worst_name]
    return Condition(
        "replay_lag",
        worst <= cfg.max_replay_lag,
        worst,
        f"group {worst_name}: {undelivered} undelivered + {pending} pending event(s) (bound {cfg.max_replay_lag})",
    )


CHECKS = {
    "bookkeeping": bookkeeping,
    "writers_live": writers_live,
    "outbox_drained": outbox_drained,
    "dead_letters_empty": dead_letters_empty,
    "verify_clean": verify_clean,
    "shadow_mismatch_rate": shadow_mismatch_rate,
    "backfill_complete": backfill_complete,
    "replay_lag": replay_lag,
}


def _evaluate(name: str, backends: Backends, tables: Tables, cfg: GateConfig) -> Condition:
    try:
        cond = CHECKS[name](backends, tables, cfg)
    except Exception as exc:  # a check that cannot run fails, saying why
        cond = Condition(name, False, None, f"check failed: {type(exc).__name__}: {first_line(exc)}")
    metrics.GATE_CONDITION.labels(name).set(1 if cond.ok else 0)
    return cond


def _next(current: str) -> str:
    from dualwrite.phase import ORDER, PHASES

    idx = ORDER[current]
    return PHASES[idx + 1].name if idx + 1 < len(PHASES) else current


def check(
    backends: Backends, tables: Tables, target: str | None = None, config: GateConfig | None = None
) -> GateResult:
    """Evaluate the conditions for moving to `target` (default: the next phase)."""
    cfg = config or GateConfig()
    current = backends.phases.current(fresh=True).name
    target = target or _next(current)
    result = GateResult(current, target)
    for name in REQUIRED.get(target, _FULL):
        result.conditions.append(_evaluate(name, backends, tables, cfg))
    return result


def export(backends: Backends, tables: Tables, config: GateConfig | None = None) -> GateResult:
    """Evaluate every condition, whichever the next phase needs, and export them with the phase and
    `dualwrite_gate_open` (1 when the next flip's conditions hold); returns the next flip's result."""
    cfg = config or GateConfig()
    current = backends.phases.current(fresh=True).name
    metrics.follow_phase(backends.phases, current)
    every = {name: _evaluate(name, backends, tables, cfg) for name in CHECKS}
    target = _next(current)
    result = GateResult(current, target, [every[name] for name in REQUIRED.get(target, _FULL)])
    metrics.GATE_OPEN.clear()  # one series: the flip that comes next
    metrics.GATE_OPEN.labels(target).set(1 if result.open else 0)
    return result
