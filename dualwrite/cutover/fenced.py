"""A phase move behind the write fence (dualwrite.fence), and what the operator sees of a move.

Vitess' SwitchTraffic for writes, across every application process: raise the fence (each instance
finishes its in-flight transactions, holds new ones, acknowledges), wait for the outbox to be relayed
and every replay group to have applied everything (0 undelivered, 0 pending), move the phase, lift the
fence. The acknowledgements and the catch-up share one bound, a little short of the fence's timeout
(so the move is done before any instance stops holding by itself); past it the fence is lifted, the
phase is unchanged, nothing is lost (the writes were only held), and the result names what blocked:
the instances that did not acknowledge, or the lag. A forced move goes on regardless, saying so.

Fenced: every move that changes the primary or the read source, and every move whose gate requires the
outbox drained (a check that live writes would otherwise race).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dualwrite.cutover.gate import REQUIRED, Condition, GateConfig, outbox_drained, replay_lag
from dualwrite.engines import Backends
from dualwrite.errors import first_line
from dualwrite.fence import DEFAULT_TIMEOUT, EXPIRY_SECONDS, Fence, FenceSummary, live_members
from dualwrite.phase import ORDER, PHASES, get_phase
from dualwrite.stream.relay import Relay
from dualwrite.tables import Tables

# Conditions that live writes race: judged again under the fence (outbox_drained is only judged there).
UNDER_FENCE = ("outbox_drained", "replay_lag")
# The move itself (a primary switch is a few transactions) must finish before members stop holding.
SWITCH_RESERVE = 0.25
# Before raising the fence: up to SETTLE_SECONDS for the backlog to be this small (nothing is held then).
SETTLE_SECONDS, SETTLED_EVENTS = 3.0, 5
# A fence that did not hold is tried again, this many times in all, the writes flowing in between.
FENCE_ATTEMPTS, BETWEEN_ATTEMPTS = 3, 1.0


def needs_fence(src: str, dst: str) -> bool:
    a, b = get_phase(src), get_phase(dst)
    return a.primary != b.primary or a.reads != b.reads or "outbox_drained" in REQUIRED.get(dst, [])


@dataclass
class FencedMove:
    ok: bool
    summary: FenceSummary | None
    blocked: str = ""
    conditions: list[Condition] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)  # why the earlier attempts gave up


class Publisher:
    """The flipper relays the outbox itself while it waits: the application's relays publish another
    process's commits only on their next poll (up to their interval, 200 ms), which the fence would hold
    the writes for. Publishing is idempotent across relays (entry id = seq), so racing them is safe; the
    housekeeping (trim, prune) stays theirs."""

    def __init__(self, backends: Backends) -> None:
        self.relay = Relay.for_backends(backends, trim_every=float("inf"), prune_every=float("inf"))

    def __call__(self) -> None:
        try:
            self.relay.run_once()
        except Exception:  # noqa: BLE001 - the catch-up check that follows reports what is not relayed
            pass


def caught_up(backends: Backends, tables: Tables, cfg: GateConfig) -> list[Condition]:
    """Under the fence: the outbox relayed and every replay group at 0 undelivered + 0 pending."""
    strict = GateConfig(cfg.max_mismatch_rate, cfg.min_comparisons, 0, cfg.verify_max_age_seconds)
    return [_judged(outbox_drained, backends, tables, cfg), _judged(replay_lag, backends, tables, strict)]


def _judged(check: Callable[..., Condition], backends: Backends, tables: Tables, cfg: GateConfig) -> Condition:
    """A check that cannot run now (a busy SQLite file, a slow Redis) is a failed poll, not a failed flip:
    the next poll may pass, and past the bound the fence is lifted saying why."""
    try:
        return check(backends, tables, cfg)
    except Exception as exc:  # noqa: BLE001 - reported in the condition
        name = check.__name__
        return Condition(name, False, None, f"check failed: {type(exc).__name__}: {first_line(exc)}")


def fenced_move(
    backends: Backends,
    tables: Tables,
    label: str,
    move: Callable[[], None],
    *,
    config: GateConfig,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
    attempts: int = 1,
    between: float = BETWEEN_ATTEMPTS,
) -> FencedMove:
    """`move()` behind the write fence, tried again up to `attempts` times (as gh-ost retries its cut-over
    lock) when the fence did not hold: the writes flow for `between` seconds in between, and no attempt
    holds them longer than `timeout`. The result's summary counts the pauses of every attempt; `earlier`
    says why the earlier ones gave up."""
    earlier: list[str] = []
    pauses: list[float] = []
    while True:
        done = _attempt(backends, tables, label, move, config=config, timeout=timeout, force=force)
        assert done.summary is not None
        pauses += done.summary.pauses
        if done.ok or len(earlier) + 1 >= attempts:
            done.summary.pauses = pauses
            done.summary.attempts = len(earlier) + 1
            done.earlier = earlier
            if not done.ok and earlier:
                done.blocked = f"{done.blocked} (attempt {attempts} of {attempts}; earlier: {'; '.join(earlier)})"
            return done
        earlier.append(done.blocked)
        time.sleep(between)


def _attempt(
    backends: Backends,
    tables: Tables,
    label: str,
    move: Callable[[], None],
    *,
    config: GateConfig,
    timeout: float,
    force: bool,
) -> FencedMove:
    """One attempt: settle (unfenced), raise the fence, wait for acknowledgements and catch-up, `move()`,
    lift; see the module doc. The summary's `steps` say where the fenced time went (ack, catch-up, move)."""
    publish = Publisher(backends)
    settle(backends, tables, config, publish=publish)
    fence = Fence(backends.redis, backends.settings.namespace, timeout=timeout, label=label)
    summary = fence.raise_()
    budget = timeout - min(SWITCH_RESERVE * timeout, 0.1)
    bound = fence.deadline - timeout + budget
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        summary.steps[name] = round(now - mark, 4)
        mark = now

    try:
        missing = fence.wait_acks(bound)
        step("ack")
        blocked = ""
        if missing:
            blocked = (
                f"instance(s) {', '.join(missing)} did not acknowledge the fence within {budget * 1000:.0f} ms "
                "(a transaction still in flight there, or the process is gone: its heartbeat expires after "
                f"{EXPIRY_SECONDS:.0f} s)"
            )
            if not force:
                return FencedMove(False, summary, blocked)
        while True:
            publish()
            conds = caught_up(backends, tables, config)
            if all(c.ok for c in conds) or time.monotonic() >= bound:
                break
            time.sleep(0.003)
        step("catch_up")
        late = [c for c in conds if not c.ok]
        if late:
            why = "; ".join(f"{c.name}: {c.detail}" for c in late)
            blocked = "; ".join(filter(None, [blocked, f"no catch-up within {budget * 1000:.0f} ms: {why}"]))
            if not force:
                return FencedMove(False, summary, blocked, conds)
        move()
        step("move")
        return FencedMove(True, summary, blocked, conds)  # forced: `blocked` says what it went past
    finally:
        fence.lift()
        fence.collect(wait=1.0)


def settle(
    backends: Backends,
    tables: Tables,
    config: GateConfig,
    *,
    within: float = SETTLE_SECONDS,
    publish: Callable[[], None] | None = None,
) -> None:
    """Before the fence, without holding anything: wait (briefly) until the outbox and the replay are
    nearly caught up, so the fenced catch-up has only the last few events to wait for."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if publish is not None:
            publish()
        conds = caught_up(backends, tables, config)
        if any(c.value is None and "check failed" not in c.detail for c in conds):
            return  # no replay group: waiting cannot help (the fence says so)
        if all(c.value is not None and c.value <= SETTLED_EVENTS for c in conds):
            return
        time.sleep(0.01)


def routing(name: str) -> str:
    """The routing of a phase, in one line."""
    p = get_phase(name)
    other = "postgres" if p.primary == "sqlite" else "sqlite"
    shadow = f"compared against {p.shadow}" if p.shadow else "off"
    return (
        f"routing: primary {p.primary}; {other} {'written too' if p.secondary_written else 'not written'}; "
        f"reads from {p.reads}; shadow reads {shadow}"
    )


_NEXT = {
    "sqlite": "once the application writes through DualWriter, `dualwrite cutover flip` to dual_write "
    "(every write reaches Postgres too)",
    "dual_write": "copy the history (`dualwrite backfill run --daemon`, which also replays the stream), "
    "then `dualwrite cutover flip` to shadow",
    "shadow": "let shadow reads compare, run `dualwrite verify`, then `dualwrite cutover flip` to postgres_reads "
    "(the gate counts comparisons since that clean verify)",
    "postgres_reads": "watch the comparisons against SQLite, then `dualwrite cutover flip` to postgres_primary "
    "(moves the writes, behind the fence)",
    "postgres_primary": "`dualwrite cutover flip` to postgres (after it SQLite is no longer written: a rollback "
    "then needs a re-backfill of SQLite)",
}


# the commands named in _NEXT that need the tables flag (which tables are captured) to run as printed
_TAKES_TABLES = re.compile(r"`dualwrite (cutover flip|cutover rollback|backfill run|verify)")


def next_step(name: str, flag: str = "") -> str:
    """The phase's usual next move, in one line; `flag` (the tables flag, ' --metadata m:attr') goes into
    each command it names."""
    idx = ORDER[get_phase(name).name]
    if idx + 1 >= len(PHASES):
        return "next: nothing: the cutover is complete (Postgres alone)"
    back = "; to go back: `dualwrite cutover rollback`" if idx >= ORDER["shadow"] else ""
    return _TAKES_TABLES.sub(lambda m: m.group(0) + flag, f"next: {_NEXT[name]}{back}")


def plan(backends: Backends, src: str, dst: str, timeout: float) -> list[str]:
    """The steps a move would take, in order (`flip --dry-run`)."""
    a, b = get_phase(src), get_phase(dst)
    steps = [f"check the gate for {src} -> {dst} (below)"]
    switch = a.primary != b.primary
    record = (
        f"move the primary to {b.primary} (retire {a.primary} under its lock, continue seq"
        + (", move Postgres' id sequences past SQLite's ids" if b.primary == "postgres" else "")
        + ") and record the phase in the same transactions, then Redis' copy"
        if switch
        else f"record {dst} on both databases, then Redis' copy (every instance follows within a second)"
    )
    if needs_fence(src, dst):
        members = live_members(backends.redis, backends.settings.namespace)
        steps += [
            f"raise the write fence: each of the {len(members)} live instance(s) finishes its in-flight "
            f"transactions, holds new ones (at most {timeout * 1000:.0f} ms) and acknowledges",
            "wait for the outbox to be relayed and every replay group to apply everything (same bound)",
            record,
            "lift the fence: the instances re-read the phase and their held writes go on",
            f"past the bound: lift the fence, keep {src}, and name the instance or the lag that blocked",
        ]
    else:
        steps.append(record)
    return [f"{i}. {s}" for i, s in enumerate(steps, 1)]
