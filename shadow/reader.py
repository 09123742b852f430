"""Shadow reads: serve every read from the phase's read backend, compare a sample against the other one.

    reader = ShadowReader(percentage=5).install(dw)     # dw.read(...) now goes through it

The comparison runs **off the request path** in a bounded thread pool: the caller gets the control's
result as soon as it is read. When the pool and its queue are full the comparison is skipped (counted
result="skipped"); the caller never waits for it. Every comparison is counted in
`dualwrite_shadow_comparisons_total{store,query,result}` and in a Redis hash `{ns}:shadow:counts` (so the
cutover gate of another process sees the rate; sent by the workers, never from the request path),
and each mismatch is kept (params masked) in the capped
stream `{ns}:shadow:mismatches`.

A mismatch is read again on both sides before it counts: if the second pair matches, a write landed
between the reads and the comparison counts as "ignored" (in flight), not "mismatch".

The candidate runs with a statement timeout on Postgres (`candidate_timeout`); a candidate that times
out is counted as result="error", not as a mismatch.

A/A mode (`aa_percentage`) runs the control's backend a second time and compares it with itself: the
noise of non-deterministic queries. It is counted apart (query label `aa:<query>`, Redis fields `aa:*`)
and subtracted from nothing automatically; `shadow report` shows both side by side.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import redis

from dualwrite import metrics
from dualwrite.settings import mask_text
from shadow.experiment import Experiment, MismatchError, Observation, Result
from shadow.normalize import DEFAULT, Normalizer

log = logging.getLogger("shadow.reader")

MISMATCH_MAXLEN = 1000
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "authorization", "credential")


def mismatches_key(namespace: str) -> str:
    return f"{namespace}:shadow:mismatches"


def counts_key(namespace: str) -> str:
    return f"{namespace}:shadow:counts"


def mask_params(params: dict[str, Any] | None) -> str:
    """Params as JSON with secret-looking values and URL passwords masked."""
    if not params:
        return "{}"
    safe = {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) else v) for k, v in params.items()}
    return mask_text(json.dumps(safe, default=str, ensure_ascii=False, sort_keys=True))


class ShadowReader:
    def __init__(
        self,
        *,
        percentage: float = 100.0,
        aa_percentage: float = 0.0,
        max_workers: int = 2,
        max_queue: int = 32,
        candidate_timeout: float = 5.0,
        synchronous: bool = False,
        raise_on_mismatches: bool = False,
        normalizer: Normalizer = DEFAULT,
        compare: Callable[[Any, Any], bool] | None = None,
        clean: Callable[[Any], Any] | None = None,
        ignores: list[Callable[[Observation, Observation], bool]] | None = None,
        run_if: Callable[[], bool] | None = None,
        per_query: dict[str, dict[str, Any]] | None = None,
        recheck_mismatches: bool = True,
    ) -> None:
        """per_query: Experiment keyword overrides by query name (compare, clean, ignores, percentage...)."""
        self.percentage, self.aa_percentage = percentage, aa_percentage
        self.synchronous, self.raise_on_mismatches = synchronous, raise_on_mismatches
        self.candidate_timeout = candidate_timeout
        self.recheck_mismatches = recheck_mismatches
        self.defaults: dict[str, Any] = {
            "normalizer": normalizer,
            "compare": compare,
            "clean": clean,
            "ignores": ignores,
            "run_if": run_if,
        }
        self.per_query = dict(per_query or {})
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="shadow")
        self._slots = threading.BoundedSemaphore(max_workers + max_queue)
        self._inflight = 0
        self._idle = threading.Condition()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._pending: Counter[str] = Counter()  # counts not yet in Redis
        self._dw: Any = None

    def install(self, dw: Any) -> ShadowReader:
        dw.reader = self
        return self

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self.flush()

    def experiment(self, store: str, query: str, ordered: bool) -> Experiment:
        kw = {**self.defaults, **self.per_query.get(query, {})}
        kw.setdefault("percentage", self.percentage)
        return Experiment(
            query,
            context={"store": store, "query": query},
            ordered=ordered,
            raise_on_mismatches=self.raise_on_mismatches,
            **kw,
        )

    # -- the request path -------------------------------------------------------------------------
    def read(
        self,
        dw: Any,
        phase: Any,
        store: str,
        query: str,
        fn: Callable[[Any], Any],
        *,
        params: dict[str, Any] | None = None,
        ordered: bool = True,
    ) -> Any:
        control = Observation.capture("control", lambda: dw.timed_read(phase.reads, store, query, fn))
        jobs: list[tuple[str, str]] = []
        if phase.shadow:
            exp = self.experiment(store, query, ordered)
            if exp.should_run():
                jobs.append((phase.shadow, query))
            if self.aa_percentage > 0 and random.random() * 100 < self.aa_percentage:
                jobs.append((phase.reads, f"aa:{query}"))
        for backend, label in jobs:
            job = (dw, backend, store, label, query, fn, params, ordered, control, phase.reads)
            if self.synchronous:
                result = self._compare(*job)
                self.flush()
                if self.raise_on_mismatches and result is not None and result.mismatched:
                    raise MismatchError(result)
            else:
                self._submit(job)
        return control.unwrap()

    def _submit(self, job: tuple[Any, ...]) -> None:
        if not self._slots.acquire(blocking=False):
            self._count(job[0], job[2], job[3], "skipped")
            return
        with self._idle:
            self._inflight += 1
        try:
            self._pool.submit(self._run_job, job)
        except RuntimeError:  # pool shut down
            self._release()
            self._count(job[0], job[2], job[3], "skipped")

    def _run_job(self, job: tuple[Any, ...]) -> None:
        try:
            self._compare(*job)
            self.flush()
        except Exception as exc:  # never let a worker die silently
            log.warning("shadow comparison crashed: %r", exc)
        finally:
            self._release()

    def _release(self) -> None:
        self._slots.release()
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted comparison has finished (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        self.flush()
        return True

    # -- the comparison (a worker thread, or the caller in synchronous mode) ---------------------
    def _compare(
        self,
        dw: Any,
        backend: str,
        store: str,
        label: str,
        query: str,
        fn: Callable[[Any], Any],
        params: dict[str, Any] | None,
        ordered: bool,
        control: Observation,
        control_backend: str,
    ) -> Result | None:
        try:
            exp = self.experiment(store, query, ordered)
            timeout_ms = int(self.candidate_timeout * 1000)

            def bounded(conn: Any) -> Any:
                if conn.dialect.name == "postgresql" and timeout_ms > 0:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
                return fn(conn)

            candidate = Observation.capture("candidate", lambda: dw.timed_read(backend, store, query, bounded))
            if candidate.exception is not None and "statement timeout" in str(candidate.exception):
                result = Result(query, "error", control, candidate, dict(exp.context), error="candidate timed out")
            else:
                result = exp.evaluate(control, candidate)
            if result.mismatched and self.recheck_mismatches and not label.startswith("aa:"):
                # A write may have landed between the two reads: read both again; a match now is in-flight.
                again = exp.evaluate(
                    Observation.capture("control", lambda: dw.timed_read(control_backend, store, query, fn)),
                    Observation.capture("candidate", lambda: dw.timed_read(backend, store, query, bounded)),
                )
                if again.matched:
                    result.outcome, result.error = "ignored", "in flight: matched when read again"
        except Exception as exc:
            log.warning("shadow %s: %r", query, exc)
            self._count(dw, store, label, "error")
            return None
        self._count(dw, store, label, result.outcome)
        if result.mismatched:
            self._record(dw, store, label, params, result, backend)
        return result

    def _count(self, dw: Any, store: str, label: str, outcome: str) -> None:
        metrics.SHADOW_COMPARISONS.labels(store, label, outcome).inc()
        field = f"aa:{outcome}" if label.startswith("aa:") else outcome
        with self._stats_lock:
            self.stats[field] += 1
            self._pending[field] += 1
            self._dw = dw

    def flush(self) -> None:
        """Add the counts not yet sent to the Redis hash (workers call it; never on the request path)."""
        with self._stats_lock:
            pending, self._pending = self._pending, Counter()
            dw = self._dw
        if not pending or dw is None:
            return
        try:
            pipe = dw.redis.pipeline(transaction=False)
            for field, n in pending.items():
                pipe.hincrby(counts_key(dw.settings.namespace), field, n)
            pipe.execute()
        except redis.RedisError:
            with self._stats_lock:
                self._pending.update(pending)  # keep them for the next flush

    def _record(
        self, dw: Any, store: str, label: str, params: dict[str, Any] | None, result: Result, backend: str
    ) -> None:
        def shown(obs: Observation | None) -> str:
            if obs is None:
                return ""
            if obs.exception is not None:
                text = f"{type(obs.exception).__name__}: {obs.exception}"
            else:
                text = json.dumps(obs.cleaned, default=repr, ensure_ascii=False, sort_keys=True)
            return mask_text(text[:8000])

        fields = {
            "store": store,
            "query": label,
            "candidate_backend": backend,
            "params": mask_params(params),
            "control": shown(result.control),
            "candidate": shown(result.candidate),
            "diff": mask_text(result.diff or ""),
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            dw.redis.xadd(mismatches_key(dw.settings.namespace), fields, maxlen=MISMATCH_MAXLEN, approximate=True)
        except redis.RedisError as exc:
            log.warning("could not record a shadow mismatch: %r", exc)


def read_mismatches(client: redis.Redis, namespace: str, count: int = 20) -> list[dict[str, str]]:
    out = []
    for eid, fields in client.xrevrange(mismatches_key(namespace), count=count):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["id"] = eid.decode()
        out.append(row)
    return out


def read_counts(client: redis.Redis, namespace: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(counts_key(namespace)).items()}
