"""Shadow comparisons in a process of their own (ShadowReader(comparator="process")).

In-process comparisons share the application's GIL: whatever a worker thread runs (SQLAlchemy building the
candidate query, the comparison) makes a request that wants the interpreter wait, which is the shadow
phase's p99 overhead when every read is compared. Here the request path sends a compact record of the read
(store, query, the read function, its params: a few hundred bytes, pickled) over a pipe, and a spawned
comparator process runs the read on both sides itself and compares them with the reader's own Experiment
settings. The request pays a pickle of the read's arguments (~1 us) and a deque append: a sender thread
writes the queue in batches, the comparator sends back counts per (store, query, result), not one outcome
per read, and it runs below the application's scheduling priority (it uses idle CPU).

- The read function must pickle (a module-level function, or functools.partial of one; an ORM read,
  dw.read(..., orm=True), of such a function too): a lambda or a closure cannot reach another process,
  and such a read is compared by the reader's threads instead (`reader.local_queries` names them).
- The comparator reads both sides a moment after the request did (the re-reads of a mismatch already allow
  for writes in flight), with the same normalizer, compare/clean/ignores and re-checks. A mismatch's re-reads
  are scheduled (shadow.rereads), served between records: one that persists never holds up the comparisons
  behind it, and its record settles (leaves the bound) when they end. On close, pending ones are read once
  more at once and their counts sent before the process exits.
- Counts reach the Redis hash from the comparator (the gate's view) and come back over the pipe to the
  application's Prometheus counters and `reader.stats`; mismatches are recorded by the comparator.
- At most `max_queue` records are in flight; beyond that a comparison is counted "skipped", never queued
  without bound, and the request never waits for the comparator (nor takes a lock or makes a syscall).
  Records parked for their re-reads (a mismatch) leave that bound, up to `max_queue` of them: a persistent
  mismatch read often would otherwise fill it for seconds and have every other read skipped.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import types
from collections import Counter, deque
from collections.abc import Callable, Sized
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from dualwrite.shadow.experiment import Observation
from dualwrite.shadow.rereads import Rereads, RereadSchedule

if TYPE_CHECKING:
    from dualwrite.engines import Backends

log = logging.getLogger("dualwrite.shadow.comparator")
REPORT_S = SEND_S = 0.05
# Below the application in the scheduler (SCHED_IDLE, else nice 19): a comparison costs about twice the read it
# checks, so at the application's priority it takes the CPU a request on a short-of-cores machine waits for
# (bench shadow, 12k reads, a loaded 2-core machine: p99 2.81x sqlite at nice 0, 1.96x at 10, 1.20x at 19,
# 0.99x SCHED_IDLE). It runs on idle CPU; one that falls behind fills its bound, the rest counted "skipped".
NICE = 19
_UNPICKLABLE = (pickle.PicklingError, AttributeError, TypeError)


class ComparatorProcess:
    """The application side: sends records, receives outcome counts (`on_outcome(store, label, outcome, n)`).

    A record is `(shape, func, args, keywords, params)`: the read's constant parts (store, query, backends...)
    and its function (a module-level function, or the one a functools.partial wraps) are sent once and then
    named by a number, so the request pickles only the arguments (~1 us, not ~7 for the whole partial)."""

    def __init__(self, settings: Any, reader_kwargs: dict[str, Any], max_queue: int, on_outcome: Callable) -> None:
        # a fresh interpreter (never a fork of a process with live threads and connections), started by -c
        # rather than by multiprocessing's spawn, which would run the application's __main__ again; not by -m,
        # which would load this module twice (as __main__ and through the package's import of it)
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from dualwrite.shadow.comparator import main; main(int(sys.argv[1]))",
                str(theirs.fileno()),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((sys.path, settings, reader_kwargs))  # the application's modules, for its read functions
        self.max_queue, self.on_outcome = max_queue, on_outcome
        self._send = threading.Lock()
        self._idle = threading.Condition()
        # Lock-free accounting: the request path only appends to the deque (atomic); `_sent` is written by the
        # sender thread alone (before it takes records off, so a record is never counted in neither), `_settled`
        # by the receiver alone. In flight = queued + sent - settled.
        self._queue: deque[bytes] = deque()
        self._sent = self._settled = 0
        self._parked = 0  # records the comparator holds for their re-reads, as it last reported (the receiver's)
        self._gone = False  # the comparator's pipe closed (the receiver saw EOF)
        self._unpicklable: set[str] = set()  # queries whose read functions cannot reach the process
        self._names: dict[Any, int] = {}  # shapes and functions already sent, by their number
        self._define = threading.Lock()
        self._ready = threading.Event()
        self._closing = False
        self._receiver = threading.Thread(target=self._receive, daemon=True, name="shadow-comparator-results")
        self._receiver.start()
        self._sender = threading.Thread(target=self._send_batches, daemon=True, name="shadow-comparator-records")
        self._sender.start()

    @property
    def unpicklable(self) -> frozenset[str]:
        return frozenset(self._unpicklable)

    @property
    def outstanding(self) -> int:
        return 0 if self._gone else len(self._queue) + self._sent - self._settled

    def submit(self, shape: tuple[Any, ...], fn: Callable, params: Any, query: str) -> bool | None:
        """Queue one record; True if queued, None if over the bound (skipped), False if it cannot be pickled.
        shape: (store, label, query, ordered, backend, control_backend)."""
        try:
            sid = self.shape_id(shape)
        except _UNPICKLABLE:
            self._unpicklable.add(query)
            return False
        return self.submit_named(sid, fn, params, query)

    def shape_id(self, shape: tuple[Any, ...]) -> int:
        """The number records of this shape are sent under (the shape itself sent once, first)."""
        sid = self._names.get(shape)
        return self._name("shape", shape) if sid is None else sid

    @property
    def parked(self) -> int:
        """Records the comparator holds for their re-reads (mismatches not settled yet), as it last said."""
        return self._parked

    def submit_named(self, sid: int, fn: Callable, params: Any, query: str) -> bool | None:
        """submit() of a shape already named (shape_id): the request path's part."""
        if query in self._unpicklable:
            return False
        exempt = min(self._parked, self.max_queue)  # parked for re-reads: out of the bound, up to max_queue
        if self._gone or len(self._queue) + self._sent - self._settled - exempt >= self.max_queue:
            return None
        if type(fn) is functools.partial and not fn.__dict__:
            func, args, keywords = fn.func, fn.args, fn.keywords
        else:
            func, args, keywords = fn, (), None
        try:
            if isinstance(func, types.FunctionType):  # a plain function goes once, then by its number
                fid = self._names.get(func)
                func = self._name("func", func) if fid is None else fid
            payload = pickle.dumps((sid, func, args, keywords, params), protocol=5)
        except _UNPICKLABLE:
            self._unpicklable.add(query)
            log.info("shadow query %s: its read function does not pickle; compared in this process", query)
            return False
        self._queue.append(payload)  # the sender writes the pipe: no syscall, no wake-up of the comparator here
        if not self._ready.is_set():
            self._ready.set()
        return True

    def _name(self, kind: str, obj: Any) -> int:
        """Send `obj` once (ahead of the records that name it, in the same queue) and return its number. Pickled
        twice: a function whose module the comparator cannot import fails there alone, not the batch."""
        with self._define:
            number = self._names.get(obj)
            if number is None:
                number = len(self._names)
                blob = pickle.dumps(obj, protocol=5)  # may raise: not named then
                self._queue.append(pickle.dumps((kind, number, blob), protocol=5))
                self._names[obj] = number
                self._ready.set()  # sent even if this read's own record is not (its function may not pickle)
        return number

    def _send_batches(self) -> None:
        """Records go in batches, every SEND_S at most: the comparator (and so a core) wakes ~20 times a second,
        not once per read."""
        while not self._closing:
            self._ready.wait()
            time.sleep(SEND_S)
            self._ready.clear()
            if not self._send_queued():
                break  # the comparator is gone: its pipe is closed

    def _send_queued(self) -> bool:
        n = len(self._queue)
        if not n:
            return True
        self._sent += n  # first: a record taken off is already counted as sent
        pop = self._queue.popleft
        batch = [pop() for _ in range(n)]
        try:
            with self._send:
                self._conn.send(batch)
        except OSError:
            return False
        return True

    def _receive(self) -> None:
        while True:
            try:
                settled, parked, counts = self._conn.recv()
            except (EOFError, OSError):
                break
            for (store, label, outcome), n in counts:
                self.on_outcome(store, label, outcome, n)
            with self._idle:
                self._settled += settled
                self._parked = parked
                self._idle.notify_all()
        lost = len(self._queue) + self._sent - self._settled  # none after a clean exit, close()'s included
        if lost > 0:
            log.warning("shadow comparator process ended; %d comparisons in flight are lost", lost)
        with self._idle:  # the process is gone: nothing more will come back
            self._gone = True
            self._idle.notify_all()

    def wait_idle(self, deadline: float) -> bool:
        with self._idle:
            while self.outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, SEND_S))  # queued records are sent without a notify
        return True

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._ready.set()
        self._sender.join(5)
        try:
            self._send_queued()
            with self._send:
                self._conn.send(None)  # the end
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("shadow comparator process did not exit within %gs of close(); killed", timeout)
            self._proc.kill()
            self._proc.wait(5)
        # The last reports are in the pipe: the receiver reads them up to the EOF the exit left. Closing the
        # pipe first would end a receiver still busy with an earlier report, and lose them.
        self._receiver.join(5)
        self._conn.close()


class _Report:
    """The outcomes settled since the last report, and how many records wait for their re-reads (`parked`): sent
    back in batches (each wakes a thread of the application: at most ~20 a second), at once after REPORT_S
    without one; the counts go to Redis with them."""

    def __init__(self, conn: Any, reader: Any) -> None:
        self.conn, self.reader = conn, reader
        self.settled, self.counts = 0, Counter[tuple[Any, ...]]()
        self.rereads: Sized = ()  # the records parked for their re-reads (the RereadSchedule, once made)
        self._parked_sent = 0
        self.sent_at = time.monotonic()

    @property
    def parked(self) -> int:
        return len(self.rereads)

    def _due(self) -> bool:
        return bool(self.settled) or self.parked != self._parked_sent

    def add(self, shape: tuple[Any, ...], result: Any) -> None:
        """One record settled: its comparison and any re-reads ended (`result` None: it failed)."""
        self.settled += 1
        self.counts[shape[0], shape[1], "error" if result is None else result.outcome] += 1

    def wait(self) -> float | None:
        return max(0.0, self.sent_at + REPORT_S - time.monotonic()) if self._due() else None

    def send_if_due(self) -> None:
        if self._due() and time.monotonic() - self.sent_at >= REPORT_S:
            self.send()

    def send(self) -> None:
        if self._due():
            self.conn.send((self.settled, self.parked, list(self.counts.items())))
            self.settled, self.counts, self._parked_sent = 0, Counter(), self.parked
        self.reader.flush()
        self.sent_at = time.monotonic()


def _serve(settings: Any, reader_kwargs: dict[str, Any], conn: Any) -> None:
    """The comparator process: compare every record on both sides, send the outcome counts back in batches.
    A mismatch's re-reads are scheduled (RereadSchedule), served between records; its record settles when they
    end. At the end every pending one is read once more at once (the reader's close() way), then reported."""
    from dualwrite.engines import Backends
    from dualwrite.shadow.reader import ShadowReader

    backends = Backends(settings)
    reader = ShadowReader(**reader_kwargs)
    names: dict[int, Any] = {}  # shapes and functions by number (an exception: the function would not load)
    report = _Report(conn, reader)
    rereads = report.rereads = RereadSchedule(report.add)
    try:
        while True:
            rereads.run_due()
            report.send_if_due()
            waits = [w for w in (rereads.wait(), report.wait()) if w is not None]
            if not conn.poll(min(waits) if waits else None):
                continue  # a re-read or a report is due
            batch = conn.recv()
            if batch is None:
                break
            for payload in batch:
                _take(reader, backends, names, payload, report, rereads)
                rereads.run_due()  # between records: a long batch does not hold re-reads back
                report.send_if_due()
    except (EOFError, OSError):
        pass
    finally:
        reader._closing.set()  # as ShadowReader.close(): open mismatches read once more, at once
        rereads.run_all()
        try:
            report.send()
        except OSError:
            pass
        reader.close()
        backends.close()


def _take(
    reader: Any, backends: Any, names: dict[int, Any], payload: bytes, report: _Report, rereads: RereadSchedule
) -> None:
    """One item of a batch: a definition, or a record compared now and settled, or scheduled for re-reads.
    Every item the application queued, definitions too, is settled once."""
    try:
        item = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - e.g. the read's module is not importable here
        log.warning("shadow comparator: a record could not be read: %r", exc)
        report.settled += 1  # not counted: its store and query are in what failed to load
        return
    if len(item) == 3:  # a definition: (kind, number, the pickled shape or function)
        try:
            names[item[1]] = pickle.loads(item[2])
        except Exception as exc:  # noqa: BLE001 - its records are counted "error"
            names[item[1]] = exc
        report.settled += 1
        return
    shape = names[item[0]]
    outcome = _compare(reader, backends, names, shape, item)
    if isinstance(outcome, Rereads):
        rereads.add(outcome, shape)
    else:
        report.add(shape, outcome)


def _compare(reader: Any, backends: Backends, names: dict[int, Any], shape: tuple[Any, ...], record: Any) -> Any:
    """The record's first comparison: its Result, None if it failed (counted "error"), or its Rereads."""
    store, label, query, ordered, backend, control_backend = shape
    _sid, func, args, keywords, params = record
    if isinstance(func, int):
        func = names[func]
    if isinstance(func, BaseException):
        log.warning("shadow comparator: the read function of %s could not be loaded: %r", query, func)
        reader._count(backends, store, label, "error")
        return None
    fn = functools.partial(func, *args, **keywords) if args or keywords else func
    control = Observation.capture("control", lambda: backends.timed_read(control_backend, store, query, fn))
    return reader.begin(backends, backend, store, label, query, fn, params, ordered, control, control_backend)


def _lower_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass
    try:
        os.nice(NICE)
    except OSError:  # not allowed either: compare at the application's priority
        pass


def main(fd: int) -> None:
    """The comparator process: the application's sys.path, settings and reader options, then records."""
    conn = Connection(fd)
    _lower_priority()
    path, settings, kwargs = conn.recv()
    sys.path[:0] = [p for p in path if p not in sys.path]
    _serve(settings, kwargs, conn)
