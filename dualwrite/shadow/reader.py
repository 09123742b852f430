"""Shadow reads: serve every read from the phase's read backend, compare a sample against the other one.

    reader = ShadowReader(percentage=5).install(dw)     # dw.read(...) now goes through it

The comparison runs **off the request path**: in a bounded thread pool (the default; workers wait for a
moment with no request in flight before each step, shadow.pacing) or in a process of its own
(`comparator="process"`, shadow.comparator). The caller gets the control's result as soon as it is read;
when the queue is full the comparison is skipped (counted result="skipped"), never waited for. Counts go
to `dualwrite_shadow_comparisons_total{store,query,result}` and, in batches, to the Redis hash the gate
reads; mismatch samples, params masked, to a capped stream (shadow.records).

A mismatch is read again on both sides after each of `recheck_delays` (seconds): if a later pair matches,
a write was in flight and the comparison counts as "ignored", not "mismatch" (shadow.rereads; close() ends
the waits: an open mismatch is read once more at once). A candidate that times out
(`candidate_timeout`, shadow.candidate) counts as "error". A/A mode (`aa_percentage`) runs the control's
backend a second time against itself (the noise of non-deterministic queries), counted apart as `aa:<query>`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dualwrite import metrics
from dualwrite.engines import Backends
from dualwrite.normalize import DEFAULT, Normalizer
from dualwrite.shadow.candidate import CandidateReads
from dualwrite.shadow.comparator import ComparatorProcess
from dualwrite.shadow.experiment import Experiment, MismatchError, Observation, Result
from dualwrite.shadow.pacing import RequestGate
from dualwrite.shadow.records import (  # noqa: F401 - re-exported: where the gate and the CLI found them
    MISMATCH_MAXLEN,
    add_counts,
    mask_params,
    read_mismatches,
    record_mismatch,
)
from dualwrite.shadow.rereads import Rereads


class _Writer(Protocol):
    """What install() needs of a writer (a DualWriter): a slot its reads go through."""

    reader: Any


log = logging.getLogger("dualwrite.shadow.reader")

RECHECK_DELAYS = (0.0, 0.2, 1.0, 3.0)  # re-reads of a mismatch before it counts: about the replay's reach
# Comparisons in flight by default (beyond the workers'); a record to the comparator process also waits up to
# the sender's 50 ms: at 32 it compared 3.9 % of 9,200 reads/s on an idle core that compares ~2,400/s (256:
# 25.7 %, 1,024: 27.2 %; one read loop, quiet 2-core machine)
THREAD_MAX_QUEUE, PROCESS_MAX_QUEUE = 32, 256


class ShadowReader:
    def __init__(
        self,
        *,
        percentage: float = 100.0,
        aa_percentage: float = 0.0,
        max_workers: int = 2,
        max_queue: int | None = None,
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
        comparator: str = "thread",
    ) -> None:
        """per_query: Experiment keyword overrides by query name (compare, clean, ignores, percentage...).
        max_queue: comparisons in flight beyond the workers' (over it a read is counted "skipped");
        THREAD_MAX_QUEUE (32) on the threads, PROCESS_MAX_QUEUE (256) to a comparator process by default.
        max_defer: longest a worker waits for the request path to be idle before a step (shadow.pacing).
        comparator: "thread" (this process' bounded pool) or "process" (shadow.comparator: a process of its
        own, so that comparing every read costs the request path no interpreter time; reads whose function
        does not pickle, and A/A runs, stay on the threads)."""
        if comparator not in ("thread", "process"):
            raise ValueError(f"comparator must be 'thread' or 'process', not {comparator!r}")
        thread_queue = THREAD_MAX_QUEUE if max_queue is None else max_queue
        self.comparator = comparator
        compared = {"normalizer": normalizer, "compare": compare, "clean": clean, "ignores": ignores}
        # what the comparator process builds its own reader from (the percentage is decided here)
        self._process_kwargs: dict[str, Any] = {
            **compared,
            "candidate_timeout": candidate_timeout,
            "per_query": per_query,
            "recheck_mismatches": recheck_mismatches,
            "recheck_delays": recheck_delays,
            "max_defer": 0.0,
            "max_queue": PROCESS_MAX_QUEUE if max_queue is None else max_queue,
        }
        self._remote: ComparatorProcess | None = None
        self._remote_lock = threading.Lock()
        self.percentage, self.aa_percentage = percentage, aa_percentage
        self.synchronous, self.raise_on_mismatches = synchronous, raise_on_mismatches
        self.candidate_timeout = candidate_timeout
        self.recheck_mismatches = recheck_mismatches
        # Off the request path a difference may take seconds to heal; synchronously the caller would wait.
        default_delays = (0.0,) if synchronous else RECHECK_DELAYS
        self.recheck_delays = default_delays if recheck_delays is None else recheck_delays
        self.defaults: dict[str, Any] = {**compared, "run_if": run_if}
        self.per_query = dict(per_query or {})
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="shadow")
        self._slots = threading.BoundedSemaphore(max_workers + thread_queue)
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
        self._child = metrics.Children()
        self.candidates = CandidateReads(candidate_timeout, max_workers)
        self._closing = threading.Event()
        # the request path's shortcut while every comparison goes to the comparator process (no A/A, no query
        # compared on the threads yet): see _read_direct
        self._direct = comparator == "process" and not synchronous and aa_percentage <= 0
        self._routes: dict[tuple[Any, ...], tuple[Experiment, ComparatorProcess, int]] = {}

    def install(self, writer: _Writer) -> ShadowReader:
        """Serve `writer.read` through this reader from now on."""
        writer.reader = self
        return self

    def close(self, wait: bool = True) -> None:
        self._closing.set()  # open mismatches are read again once, at once: no re-read delays waited out
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self.flush()
        self.candidates.close()
        self._routes.clear()
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    @property
    def local_queries(self) -> set[str]:
        """With comparator="process": the queries compared on this process' threads instead (their read
        functions do not pickle)."""
        return set() if self._remote is None else set(self._remote.unpicklable)

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
        if self._direct:
            return self._read_direct(backends, phase, store, query, fn, params, ordered)
        self.gate.enter()
        try:
            return self._read(backends, phase, store, query, fn, params, ordered)
        finally:
            self.gate.leave()

    def _read_direct(
        self, backends: Backends, phase: Any, store: str, query: str, fn: Callable[[Any], Any],
        params: dict[str, Any] | None, ordered: bool,
    ) -> Any:  # fmt: skip
        """comparator="process" with no comparison on this process' threads: no gate (no worker here waits for
        an idle moment) and no Observation; the read, then its record queued under the query's shape number."""
        start = time.perf_counter()
        try:
            value, error = backends.timed_read(phase.reads, store, query, fn), None
        except Exception as exc:  # compared like a value, then raised to the caller
            value, error = None, exc
        if phase.shadow:
            key = (store, query, ordered, phase.shadow, phase.reads, self.percentage)
            route = self._routes.get(key) or self._route(backends, key)
            if route[0].should_run():
                sent = route[1].submit_named(route[2], fn, params, query)
                if sent is None:
                    self._count(backends, store, query, "skipped")
                elif sent is False:  # its function does not pickle: this read and the next ones on the threads
                    control = Observation("control", value, error, time.perf_counter() - start)
                    job = (backends, phase.shadow, store, query, query, fn, params, ordered, control, phase.reads)
                    self._submit(job)
        if error is not None:
            raise error
        return value

    def _route(self, backends: Backends, key: tuple[Any, ...]) -> tuple[Experiment, ComparatorProcess, int]:
        """A query's Experiment, the comparator and its shape number, looked up once per configuration."""
        store, query, ordered, backend, control_backend, _percentage = key
        remote = self._remote_for(backends)
        shape = (store, query, query, ordered, backend, control_backend)  # label = query: A/A is not direct
        route = (self.experiment(store, query, ordered), remote, remote.shape_id(shape))
        self._routes[key] = route
        return route

    def _read(
        self, backends: Backends, phase: Any, store: str, query: str, fn: Callable[[Any], Any],
        params: dict[str, Any] | None, ordered: bool,
    ) -> Any:  # fmt: skip
        control = Observation.capture("control", lambda: backends.timed_read(phase.reads, store, query, fn))
        jobs: list[tuple[str, str]] = []
        if phase.shadow:
            exp = self.experiment(store, query, ordered)
            if exp.should_run():
                jobs.append((phase.shadow, query))
            if self.aa_percentage > 0 and random.random() * 100 < self.aa_percentage:
                jobs.append((phase.reads, f"aa:{query}"))
        for backend, label in jobs:
            if self.comparator == "process" and not self.synchronous and not label.startswith("aa:"):
                shape = (store, label, query, ordered, backend, phase.reads)
                sent = self._remote_for(backends).submit(shape, fn, params, query)
                if sent is None:
                    self._count(backends, store, label, "skipped")
                if sent is not False:
                    continue
            job = (backends, backend, store, label, query, fn, params, ordered, control, phase.reads)
            if self.synchronous:
                result = self._compare(*job)
                self.flush()
                if self.raise_on_mismatches and result is not None and result.mismatched:
                    raise MismatchError(result)
            else:
                self._submit(job)
        return control.unwrap()

    def _remote_for(self, backends: Backends) -> ComparatorProcess:
        if self._remote is None:
            with self._remote_lock:
                if self._remote is None:
                    self._remote = ComparatorProcess(
                        backends.settings, self._process_kwargs, self._process_kwargs["max_queue"], self._counted
                    )
        return self._remote

    def _counted(self, store: str, label: str, outcome: str, n: int = 1) -> None:
        """Outcomes of the comparator process: into this process' metrics and stats (it sent Redis its own)."""
        self._inc_comparisons(store, label, outcome, n)
        with self._stats_lock:
            self.stats[outcome] += n

    def _submit(self, job: tuple[Any, ...]) -> None:
        self._direct = False  # a comparison on this process' threads: requests pass the gate from now on
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
        if self._remote is not None and not self._remote.wait_idle(deadline):
            return False
        self.flush()
        return True

    # -- the comparison (a worker thread, or the caller in synchronous mode) ---------------------
    def _compare(
        self, backends: Backends, backend: str, store: str, label: str, query: str, fn: Callable[[Any], Any],
        params: dict[str, Any] | None, ordered: bool, control: Observation, control_backend: str,
        pause: Callable[[], None] | None = None,
    ) -> Result | None:  # fmt: skip
        """Compare, and read a mismatch again after each delay, waiting here (close() ends the waits)."""
        outcome = self.begin(
            backends, backend, store, label, query, fn, params, ordered, control, control_backend, pause
        )
        while isinstance(outcome, Rereads):
            if outcome.delay > 0 and not self._closing.is_set():
                self._closing.wait(outcome.delay)
            outcome = outcome.step()
        return outcome

    def begin(
        self, backends: Backends, backend: str, store: str, label: str, query: str, fn: Callable[[Any], Any],
        params: dict[str, Any] | None, ordered: bool, control: Observation, control_backend: str,
        pause: Callable[[], None] | None = None,
    ) -> Result | Rereads | None:  # fmt: skip
        """The first comparison: its settled Result (None: it failed, counted "error"), or, for a mismatch to
        be read again, the Rereads that will settle it (its driver waits: this thread, or the comparator's heap)."""
        try:
            exp = self.experiment(store, query, ordered)
            if pause is not None:
                pause()
            candidate = Observation.capture(
                "candidate", lambda: self.candidates.read(backends, backend, store, query, fn)
            )
            if candidate.exception is not None and "statement timeout" in str(candidate.exception):
                result = Result(query, "error", control, candidate, dict(exp.context), error="candidate timed out")
            else:  # right after the candidate's own burst: short results match in microseconds
                result = exp.evaluate(control, candidate, pause)
        except Exception as exc:
            log.warning("shadow %s: %r", query, exc)
            self._count(backends, store, label, "error")
            return None
        if result.mismatched and self.recheck_mismatches and self.recheck_delays and not label.startswith("aa:"):
            job = (backend, store, label, query, fn, params, control_backend)
            return Rereads(self, exp, result, backends, job, pause)
        return self._settle(backends, backend, store, label, params, result)

    def _settle(
        self, backends: Backends, backend: str, store: str, label: str, params: dict[str, Any] | None, result: Result
    ) -> Result:
        self._count(backends, store, label, result.outcome)
        if result.mismatched:
            record_mismatch(backends, store, label, params, result, backend)
        return result

    def _inc_comparisons(self, store: str, label: str, outcome: str, n: int = 1) -> None:
        if (metrics.SHADOW_COMPARISONS, store, label, outcome) not in self._child:
            metrics.prime(queries=[(store, label)])  # every result at 0: a mismatch rate of 0, not "No data"
        self._child(metrics.SHADOW_COMPARISONS, store, label, outcome).inc(n)

    def _count(self, backends: Backends, store: str, label: str, outcome: str) -> None:
        self._inc_comparisons(store, label, outcome)
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
        if not add_counts(backends, pending):
            with self._stats_lock:
                self._pending.update(pending)  # keep them for the next flush
