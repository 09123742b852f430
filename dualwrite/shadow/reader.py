"""Shadow reads: serve every read from the phase's read backend, compare a sample against the other one.

    reader = ShadowReader(percentage=5).install(dw)     # dw.read(...) now goes through it

The comparison runs **off the request path** in a bounded thread pool: the caller gets the control's
result as soon as it is read. When the pool and its queue are full the comparison is skipped (counted
result="skipped"); the caller never waits for it. Every comparison is counted in
`dualwrite_shadow_comparisons_total{store,query,result}` and in a Redis hash `{ns}:shadow:counts` (so the
cutover gate of another process sees the rate; sent by the workers, never from the request path),
and each mismatch is kept (params masked) in the capped
stream `{ns}:shadow:mismatches`.

A mismatch is read again on both sides before it counts, after each of `recheck_delays` (seconds): if a
later pair matches, a write landed between the reads or had not reached the other side yet (an inline
apply that failed is healed by the replay within moments), and the comparison counts as "ignored" (in
flight), not "mismatch". Only a difference that outlives every re-read counts.

The candidate runs with a statement timeout on Postgres (`candidate_timeout`); a candidate that times
out is counted as result="error", not as a mismatch. Postgres candidates use the reader's own small
engine whose sessions carry that timeout (set once per connection, not per read) and that does not ping
on checkout: a candidate is 3 round trips (BEGIN, the read, ROLLBACK), not 5, and takes no connection
from the application's pool. A stale connection costs one comparison (counted "error"), never a read.

The request path does no comparison work and no I/O besides the control read: workers wait for a
moment when no request is in flight before each step (shadow.pacing), equal results of the same types
match without normalizing, labelled metric children are cached, and counts reach Redis in batches (at
most every `flush_interval` seconds, or as soon as the queue is empty).

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
from typing import Any, Protocol

import redis
from sqlalchemy import Engine, create_engine

from dualwrite import metrics
from dualwrite.engines import Backends, session_options
from dualwrite.normalize import DEFAULT, Normalizer
from dualwrite.settings import mask_text
from dualwrite.shadow.experiment import Experiment, MismatchError, Observation, Result
from dualwrite.shadow.pacing import RequestGate


class _Writer(Protocol):
    """What install() needs of a writer (a DualWriter): a slot its reads go through."""

    reader: Any


log = logging.getLogger("dualwrite.shadow.reader")

MISMATCH_MAXLEN = 1000
RECHECK_DELAYS = (0.0, 0.2, 1.0, 3.0)  # re-reads of a mismatch before it counts: about the replay's reach
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
        recheck_delays: tuple[float, ...] | None = None,
        max_defer: float = 0.1,
        flush_interval: float = 0.5,
    ) -> None:
        """per_query: Experiment keyword overrides by query name (compare, clean, ignores, percentage...).
        max_defer: longest a worker waits for the request path to be idle before a step (shadow.pacing)."""
        self.percentage, self.aa_percentage = percentage, aa_percentage
        self.synchronous, self.raise_on_mismatches = synchronous, raise_on_mismatches
        self.candidate_timeout = candidate_timeout
        self.recheck_mismatches = recheck_mismatches
        # Off the request path a difference may take seconds to heal; synchronously the caller would wait.
        default_delays = (0.0,) if synchronous else RECHECK_DELAYS
        self.recheck_delays = default_delays if recheck_delays is None else recheck_delays
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
        self._backends: Backends | None = None  # where the pending counts go
        self.gate = RequestGate(max_defer)
        self.flush_interval = flush_interval
        self._flushed_at = 0.0
        self._max_workers = max_workers
        self._experiments: dict[tuple[Any, ...], Experiment] = {}
        self._children: dict[tuple[Any, ...], Any] = {}  # labelled metric children (labels() takes a lock)
        self._engines: dict[int, tuple[Any, Engine]] = {}  # Postgres candidate engine per writer
        self._engines_lock = threading.Lock()

    def install(self, writer: _Writer) -> ShadowReader:
        """Serve `writer.read` through this reader from now on."""
        writer.reader = self
        return self

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self.flush()
        with self._engines_lock:
            engines, self._engines = list(self._engines.values()), {}
        for _owner, engine in engines:
            engine.dispose()

    def experiment(self, store: str, query: str, ordered: bool) -> Experiment:
        """The query's Experiment, built once per configuration (the request path asks for it every read)."""
        key = (store, query, ordered, self.percentage, self.raise_on_mismatches)
        exp = self._experiments.get(key)
        if exp is None:
            kw = {**self.defaults, **self.per_query.get(query, {})}
            kw.setdefault("percentage", self.percentage)
            exp = Experiment(
                query,
                context={"store": store, "query": query},
                ordered=ordered,
                raise_on_mismatches=self.raise_on_mismatches,
                **kw,
            )
            self._experiments[key] = exp
        return exp

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the request path -------------------------------------------------------------------------
    def read(
        self,
        backends: Backends,
        phase: Any,
        store: str,
        query: str,
        fn: Callable[[Any], Any],
        *,
        params: dict[str, Any] | None = None,
        ordered: bool = True,
    ) -> Any:
        self.gate.enter()
        try:
            return self._read(backends, phase, store, query, fn, params, ordered)
        finally:
            self.gate.leave()

    def _read(
        self,
        backends: Backends,
        phase: Any,
        store: str,
        query: str,
        fn: Callable[[Any], Any],
        params: dict[str, Any] | None,
        ordered: bool,
    ) -> Any:
        control = Observation.capture("control", lambda: backends.timed_read(phase.reads, store, query, fn))
        jobs: list[tuple[str, str]] = []
        if phase.shadow:
            exp = self.experiment(store, query, ordered)
            if exp.should_run():
                jobs.append((phase.shadow, query))
            if self.aa_percentage > 0 and random.random() * 100 < self.aa_percentage:
                jobs.append((phase.reads, f"aa:{query}"))
        for backend, label in jobs:
            job = (backends, backend, store, label, query, fn, params, ordered, control, phase.reads)
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
            self._compare(*job, pause=self.gate.wait_quiet)
            # Batch the Redis update while the queue is busy; send at once when it drains.
            if self._inflight <= 1 or time.monotonic() - self._flushed_at >= self.flush_interval:
                self.gate.wait_quiet()
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
        backends: Backends,
        backend: str,
        store: str,
        label: str,
        query: str,
        fn: Callable[[Any], Any],
        params: dict[str, Any] | None,
        ordered: bool,
        control: Observation,
        control_backend: str,
        pause: Callable[[], None] | None = None,
    ) -> Result | None:
        try:
            exp = self.experiment(store, query, ordered)
            if pause is not None:
                pause()
            candidate = Observation.capture(
                "candidate", lambda: self._candidate_read(backends, backend, store, query, fn)
            )
            if candidate.exception is not None and "statement timeout" in str(candidate.exception):
                result = Result(query, "error", control, candidate, dict(exp.context), error="candidate timed out")
            else:  # right after the candidate's own burst: short results match in microseconds
                result = exp.evaluate(control, candidate, pause)
            if result.mismatched and self.recheck_mismatches and not label.startswith("aa:"):
                again = self._recheck(exp, backends, backend, control_backend, store, query, fn, pause)
                if again is not None:
                    result.outcome, result.error = "ignored", f"in flight: matched when read again after {again:g}s"
        except Exception as exc:
            log.warning("shadow %s: %r", query, exc)
            self._count(backends, store, label, "error")
            return None
        self._count(backends, store, label, result.outcome)
        if result.mismatched:
            self._record(backends, store, label, params, result, backend)
        return result

    def _recheck(
        self,
        exp: Experiment,
        backends: Backends,
        backend: str,
        control_backend: str,
        store: str,
        query: str,
        fn: Callable[[Any], Any],
        pause: Callable[[], None] | None,
    ) -> float | None:
        """Read both sides again after each delay; the delay after which they matched, or None."""
        waited = 0.0
        for delay in self.recheck_delays:
            if delay > 0:
                time.sleep(delay)  # a worker thread (off the request path), or a test in synchronous mode
                waited += delay
            again = exp.evaluate(
                Observation.capture("control", lambda: backends.timed_read(control_backend, store, query, fn)),
                Observation.capture("candidate", lambda: self._candidate_read(backends, backend, store, query, fn)),
                pause,
            )
            if again.matched:
                return waited
        return None

    # -- the candidate read ---------------------------------------------------------------------------
    def _candidate_read(
        self, backends: Backends, backend: str, store: str, query: str, fn: Callable[[Any], Any]
    ) -> Any:
        """fn on `backend` in one transaction, as backends.timed_read does; Postgres through the reader's engine.
        Timed as a read of `backend` and, apart, as the candidate (dualwrite_shadow_candidate_duration_seconds)."""
        start = time.perf_counter()
        try:
            if backend != "postgres":
                return backends.timed_read(backend, store, query, fn)
            try:
                with self._candidate_engine(backends).connect() as conn:
                    result = fn(conn)
                    conn.rollback()
                    return result
            finally:
                self._child(metrics.READ_DURATION, backend, store, query).observe(time.perf_counter() - start)
        finally:
            self._child(metrics.SHADOW_CANDIDATE, backend, store, query).observe(time.perf_counter() - start)

    def _candidate_engine(self, backends: Backends) -> Engine:
        owner = backends.postgres
        found = self._engines.get(id(owner))
        if found is not None and found[0] is owner:
            return found[1]
        with self._engines_lock:
            found = self._engines.get(id(owner))
            if found is not None and found[0] is owner:
                return found[1]
            settings = backends.settings  # the session options of dualwrite.engines.postgres_engine
            options = session_options(settings.pg_schema, settings.state_schema)
            timeout_ms = int(self.candidate_timeout * 1000)
            if timeout_ms > 0:
                options += f" -cstatement_timeout={timeout_ms}"
            engine = create_engine(
                owner.url,
                pool_size=self._max_workers,
                max_overflow=self._max_workers,
                connect_args={"options": options, "connect_timeout": 5},
            )
            self._engines[id(owner)] = (owner, engine)
            return engine

    def _count(self, backends: Backends, store: str, label: str, outcome: str) -> None:
        if (metrics.SHADOW_COMPARISONS, store, label, outcome) not in self._children:
            metrics.prime(queries=[(store, label)])  # every result at 0: a mismatch rate of 0, not "No data"
        self._child(metrics.SHADOW_COMPARISONS, store, label, outcome).inc()
        field = f"aa:{outcome}" if label.startswith("aa:") else outcome
        with self._stats_lock:
            self.stats[field] += 1
            self._pending[field] += 1
            self._backends = backends

    def flush(self) -> None:
        """Add the counts not yet sent to the Redis hash (workers call it; never on the request path)."""
        with self._stats_lock:
            pending, self._pending = self._pending, Counter()
            backends = self._backends
            self._flushed_at = time.monotonic()
        if not pending or backends is None:
            return
        try:
            pipe = backends.redis.pipeline(transaction=False)
            for field, n in pending.items():
                pipe.hincrby(counts_key(backends.settings.namespace), field, n)
            pipe.execute()
        except redis.RedisError:
            with self._stats_lock:
                self._pending.update(pending)  # keep them for the next flush

    def _record(
        self, backends: Backends, store: str, label: str, params: dict[str, Any] | None, result: Result, backend: str
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
            "rows": mask_text("\n".join(result.rows)),
            "diff": mask_text(result.diff or ""),
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            backends.redis.xadd(
                mismatches_key(backends.settings.namespace), fields, maxlen=MISMATCH_MAXLEN, approximate=True
            )
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
