"""Moving the phase: one step forward when the gate passes, rollback while SQLite is complete.

- `flip` moves to the next phase only if the gate passes (or force with a reason). The phase of record
  is written on both databases, then Redis' copy (phase.py). Moving from postgres_reads to
  postgres_primary also moves the write primary (switch_primary), recording the phase in the switch's
  transactions; writers that meet the retired side re-read the phase and retry.
- `rollback` returns (by default) to the last phase before the current one where SQLite is the primary
  and serves reads; refused when SQLite misses changes (from `postgres`) unless forced. Leaving a
  Postgres-primary phase moves the primary back to SQLite.
- A move that changes the primary or the read source (or whose gate needs the outbox drained) runs
  behind the write fence (fenced.py, dualwrite/fence.py): every instance holds its writes for a bounded
  moment while the outbox is relayed and the replay catches up; past the bound nothing moves and the
  flip names what blocked it. The outcome carries the fence's summary (each held write's pause).
- `flip_postponed` retries the (fenced) flip, printing what it waits for, until it moves, a deadline, or
  a cancel (the Redis key `{ns}:cutover:cancel`, set by `dualwrite cutover cancel`); meanwhile it is
  armed (`{ns}:cutover:armed`, shown by `dualwrite status`).
- Hooks run after each phase change: a shell command gets DUALWRITE_FROM / DUALWRITE_TO /
  DUALWRITE_REASON / DUALWRITE_FORCED / DUALWRITE_NAMESPACE in its environment; an http(s):// URL gets
  the same as a JSON POST. Several may be given; a failing hook is reported, never reverts the change.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dualwrite import metrics
from dualwrite.cutover.fenced import (
    FENCE_ATTEMPTS,
    UNDER_FENCE,
    FencedMove,
    fenced_move,
    needs_fence,
    next_step,
    plan,
    routing,
)
from dualwrite.cutover.gate import GateConfig, GateResult, check
from dualwrite.engines import Backends
from dualwrite.errors import PhaseError
from dualwrite.fence import DEFAULT_TIMEOUT, FenceSummary
from dualwrite.phase import ORDER, PHASES, check_transition, get_phase
from dualwrite.redis_keys import cutover_armed_key, cutover_cancel_key
from dualwrite.settings import mask_text
from dualwrite.switch import switch_primary
from dualwrite.tables import Tables

log = logging.getLogger("dualwrite.cutover.flip")
HOOK_TIMEOUT = 30.0


@dataclass
class FlipOutcome:
    moved: bool
    current: str
    target: str
    gate: GateResult | None = None
    message: str = ""
    hook_rc: int | None = None
    fence: FenceSummary | None = None
    steps: list[str] = field(default_factory=list)  # --dry-run: what it would do

    def to_dict(self) -> dict[str, Any]:
        # the --report / --json format operators' tooling reads: its keys are spelled out, one per line
        return {
            "moved": self.moved,
            "phase": self.current,
            "target": self.target,
            "message": self.message,
            "gate": self.gate.to_dict() if self.gate else None,
            "fence": self.fence.to_dict() if self.fence else None,
            "steps": self.steps,
            "routing": routing(self.current),
            "next": next_step(self.current),
            "hook_rc": self.hook_rc,
        }


def _post_hook(url: str, payload: dict[str, Any]) -> int:
    """POST the change as JSON; 0 on a 2xx answer, else the HTTP status (-1 when unreachable)."""
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=HOOK_TIMEOUT) as resp:  # noqa: S310 - http(s) only, checked
            return 0 if 200 <= resp.status < 300 else resp.status
    except urllib.error.HTTPError as exc:
        log.warning("hook %s answered %d", mask_text(url), exc.code)
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        log.warning("hook %s unreachable: %s", mask_text(url), mask_text(str(exc))[:300])
        return -1


def _command_hook(hook: str, env: dict[str, str]) -> int:
    try:
        proc = subprocess.run(hook, shell=True, env=env, timeout=HOOK_TIMEOUT, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        log.warning("hook %r timed out", mask_text(hook))
        return -1
    if proc.returncode != 0:
        log.warning("hook %r exited %d: %s", mask_text(hook), proc.returncode, mask_text(proc.stderr.strip()[:500]))
    return proc.returncode


def run_hook(
    hook: str | Sequence[str] | None, namespace: str, src: str, dst: str, reason: str, forced: bool
) -> int | None:
    """Run each hook (a shell command, or an http(s):// URL that gets a JSON POST) after a phase change.

    A failing hook is logged and reported (first non-zero code), never undoes the change: the phase has
    already moved, and every app instance follows it within a second."""
    hooks = [hook] if isinstance(hook, str) else list(hook or ())
    if not hooks:
        return None
    payload = {
        "from": src,
        "to": dst,
        "reason": reason,
        "forced": forced,
        "namespace": namespace,
        "at": datetime.now(UTC).isoformat(),
    }
    env = {
        **os.environ,
        "DUALWRITE_FROM": src,
        "DUALWRITE_TO": dst,
        "DUALWRITE_REASON": reason,
        "DUALWRITE_FORCED": "1" if forced else "0",
        "DUALWRITE_NAMESPACE": namespace,
    }
    codes = [_post_hook(h, payload) if h.startswith(("http://", "https://")) else _command_hook(h, env) for h in hooks]
    return next((c for c in codes if c != 0), 0)


def _fenced(
    backends: Backends,
    tables: Tables,
    src: str,
    dst: str,
    *,
    force: bool,
    reason: str,
    actor: str | None,
    config: GateConfig | None,
    fence_timeout: float,
    fence_attempts: int = FENCE_ATTEMPTS,
) -> FencedMove | None:
    """Move src -> dst, behind the write fence where it needs one (None: moved without a fence)."""
    if not force:
        check_transition(src, dst)  # an unsafe move is refused before any write is held
    if not needs_fence(src, dst):
        _move(backends, tables, src, dst, force=force, reason=reason, actor=actor)
        return None
    return fenced_move(
        backends,
        tables,
        f"{src} -> {dst}",
        lambda: _move(backends, tables, src, dst, force=force, reason=reason, actor=actor),
        config=config or GateConfig(),
        timeout=fence_timeout,
        force=force,
        attempts=fence_attempts,
    )


def _move(
    backends: Backends, tables: Tables, src: str, dst: str, *, force: bool, reason: str, actor: str | None
) -> None:
    old_primary, new_primary = get_phase(src).primary, get_phase(dst).primary
    if old_primary == new_primary:
        backends.phases.set(dst, force=force, reason=reason, actor=actor)  # recorded on both sides, then Redis
    else:
        # the phase of record moves in the switch's own transactions; Redis' copy follows
        rec, previous = backends.phases.prepare(dst, force=force)
        switch_primary(backends, tables, new_primary, record=rec if backends.phases.record is not None else None)
        backends.phases.publish(rec, previous, force=force, reason=reason, actor=actor)
    metrics.PHASE_CHANGED.labels(dst).set(time.time())  # the dashboards' flip annotation (if this is scraped)


def flip(
    backends: Backends,
    tables: Tables,
    *,
    force: bool = False,
    reason: str = "",
    hook: str | Sequence[str] | None = None,
    config: GateConfig | None = None,
    actor: str | None = None,
    fence_timeout: float = DEFAULT_TIMEOUT,
    dry_run: bool = False,
    fence_attempts: int = FENCE_ATTEMPTS,
) -> FlipOutcome:
    """One phase forward if the gate passes: behind the write fence when the move needs one (then the
    outbox is judged under the fence, where no write races it). dry_run: the steps and the gate only."""
    current = backends.phases.current(fresh=True).name
    idx = ORDER[current]
    if idx + 1 >= len(PHASES):
        raise PhaseError(f"already at the last phase ({current})")
    target = PHASES[idx + 1].name
    if force and not reason and not dry_run:
        raise PhaseError("a forced flip needs --reason")
    gate = check(backends, tables, target, config)
    fenced = needs_fence(current, target)
    blocking = gate.blocking if fenced else gate.failing
    if dry_run:
        verdict = "would move" if not blocking or force else "would refuse"
        return FlipOutcome(
            False,
            current,
            target,
            gate,
            f"dry run: {verdict} {current} -> {target}; nothing changed",
            steps=plan(backends, current, target, fence_timeout),
        )
    if blocking and not force:
        names = ", ".join(f"{c.name} ({c.detail})" for c in blocking)
        return FlipOutcome(False, current, target, gate, f"refusing {current} -> {target}: {names}")
    why = reason or "gate passed"
    done = _fenced(
        backends, tables, current, target, force=force, reason=why, actor=actor, config=config,
        fence_timeout=fence_timeout, fence_attempts=fence_attempts,
    )  # fmt: skip
    if done is not None:
        _judged_under_fence(gate, done)
        if not done.ok:
            msg = f"refusing {current} -> {target}: fence: {done.blocked}; the phase is unchanged, no write lost"
            return FlipOutcome(False, current, target, gate, msg, fence=done.summary)
    rc = run_hook(hook, backends.settings.namespace, current, target, reason, force)
    return FlipOutcome(True, target, target, gate, _moved(current, target, done), rc, done.summary if done else None)


def _moved(src: str, dst: str, done: FencedMove | None) -> str:
    forced_past = f" (forced past the fence: {done.blocked})" if done is not None and done.blocked else ""
    retried = (
        f" (the fence held on attempt {len(done.earlier) + 1}: {'; '.join(done.earlier)})"
        if done and done.earlier
        else ""
    )
    return f"{src} -> {dst}{forced_past}{retried}"


def _judged_under_fence(gate: GateResult, done: FencedMove) -> None:
    """The gate as it was when the phase moved: the live conditions as judged under the fence."""
    fresh = {c.name: c for c in done.conditions}
    gate.conditions = [fresh.get(c.name, c) if c.name in UNDER_FENCE else c for c in gate.conditions]


def rollback_target(current: str) -> str:
    idx = ORDER[current]
    for p in reversed(PHASES[:idx]):
        if p.primary == "sqlite" and p.reads == "sqlite":
            return p.name
    raise PhaseError(f"nothing to roll back to from {current}")


def rollback(
    backends: Backends,
    tables: Tables,
    *,
    to: str | None = None,
    force: bool = False,
    reason: str = "",
    hook: str | Sequence[str] | None = None,
    actor: str | None = None,
    fence_timeout: float = DEFAULT_TIMEOUT,
    fence_attempts: int = FENCE_ATTEMPTS,
) -> FlipOutcome:
    current = backends.phases.current(fresh=True).name
    target = to or rollback_target(current)
    if ORDER[get_phase(target).name] >= ORDER[current]:
        raise PhaseError(f"{target} is not before {current}; use flip to move forward")
    if force and not reason:
        raise PhaseError("a forced rollback needs --reason")
    done = _fenced(
        backends, tables, current, target, force=force, reason=reason or "rollback", actor=actor, config=None,
        fence_timeout=fence_timeout, fence_attempts=fence_attempts,
    )  # fmt: skip
    if done is not None and not done.ok:
        msg = f"refusing rollback {current} -> {target}: fence: {done.blocked}; the phase is unchanged (or --force)"
        return FlipOutcome(False, current, target, None, msg, fence=done.summary)
    rc = run_hook(hook, backends.settings.namespace, current, target, reason, force)
    return FlipOutcome(True, target, target, None, _moved(current, target, done), rc, done.summary if done else None)


def flip_postponed(
    backends: Backends,
    tables: Tables,
    *,
    deadline: float | None = None,
    poll: float = 1.0,
    echo: Callable[[str], None] = print,
    hook: str | Sequence[str] | None = None,
    config: GateConfig | None = None,
    reason: str = "",
    actor: str | None = None,
    fence_timeout: float = DEFAULT_TIMEOUT,
    fence_attempts: int = FENCE_ATTEMPTS,
) -> FlipOutcome:
    """Retry the (fenced) flip until it moves, a deadline, or a cancel; says what it waits for. While it
    waits it is armed: `{ns}:cutover:armed` (shown by `dualwrite status`), refreshed at every poll. After a
    fence that did not hold, the next attempt waits at least a second (the writers were just paused)."""
    ns = backends.settings.namespace
    key = cutover_cancel_key(ns)
    backends.redis.delete(key)
    start = time.monotonic()
    last_said, said_at = "", 0.0
    armed_since = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        while True:
            current = backends.phases.current(fresh=True).name
            if backends.redis.get(key) is not None:
                backends.redis.delete(key)
                echo("cancelled")
                return FlipOutcome(False, current, current, None, "cancelled")
            out = flip(
                backends,
                tables,
                reason=reason or "postponed flip: gate passed",
                hook=hook,
                config=config,
                actor=actor,
                fence_timeout=fence_timeout,
                fence_attempts=fence_attempts,
            )
            if out.moved or out.gate is None:
                return out
            waiting = out.message.split(": ", 1)[-1]
            now = time.monotonic()
            if waiting != last_said or now - said_at >= 10:
                echo(f"waiting {now - start:.0f}s to flip {out.current} -> {out.target}: {waiting}")
                last_said, said_at = waiting, now
            if deadline is not None and now - start >= deadline:
                return FlipOutcome(
                    False,
                    current,
                    out.target,
                    out.gate,
                    f"deadline of {deadline:.0f}s passed; {waiting}",
                    fence=out.fence,
                )
            doc = {
                "from": current,
                "to": out.target,
                "since": armed_since,
                "pid": os.getpid(),
                "waiting": waiting,
                "deadline_in": None if deadline is None else round(deadline - (now - start), 1),
            }
            backends.redis.set(cutover_armed_key(ns), json.dumps(doc), ex=int(max(10, 3 * poll)))
            time.sleep(max(poll, 1.0) if out.fence is not None else poll)
    finally:
        backends.redis.delete(cutover_armed_key(ns))


def read_armed(client: Any, namespace: str) -> dict[str, Any] | None:
    """The waiting `flip --postpone`, if one is armed."""
    raw = client.get(cutover_armed_key(namespace))
    return None if raw is None else json.loads(raw)
