"""Shadow comparisons in a process of their own (ShadowReader(comparator="process")).

In-process comparisons share the application's GIL: whatever a worker thread runs (SQLAlchemy building the
candidate query, the comparison) makes a request that wants the interpreter wait, which is the shadow
phase's p99 overhead when every read is compared. Here the request path sends a compact record of the read
(store, query, the read function, its params: a few hundred bytes, pickled) over a pipe, and a spawned
comparator process runs the read on both sides itself and compares them with the reader's own Experiment
settings. The request pays one pickle and one pipe write; the comparison pays nothing in its interpreter.

- The read function must pickle (a module-level function, or functools.partial of one): a lambda or a
  closure cannot reach another process, and such a read is compared by the reader's threads instead.
- The comparator reads both sides a moment after the request did (the re-reads of a mismatch already allow
  for writes in flight), with the same normalizer, compare/clean/ignores and re-checks.
- Counts reach the Redis hash from the comparator (the gate's view) and come back over the pipe to the
  application's Prometheus counters and `reader.stats`; mismatches are recorded by the comparator.
- At most `max_queue` records are in flight; beyond that a comparison is counted "skipped", never queued
  without bound, and the request never waits for the comparator.
"""

from __future__ import annotations

import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualwrite.engines import Backends

log = logging.getLogger("dualwrite.shadow.comparator")
REPORT_S = SEND_S = 0.05


class ComparatorProcess:
    """The application side: sends records, receives outcomes (`on_outcome(store, label, outcome)`)."""

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
        self.outstanding = 0
        self._unpicklable: set[str] = set()  # queries whose read functions cannot reach the process
        self._batch: list[bytes] = []  # pickled records the sender has not sent yet
        self._ready = threading.Event()
        self._closing = False
        self._receiver = threading.Thread(target=self._receive, daemon=True, name="shadow-comparator-results")
        self._receiver.start()
        self._sender = threading.Thread(target=self._send_batches, daemon=True, name="shadow-comparator-records")
        self._sender.start()

    def submit(self, record: tuple[Any, ...], query: str) -> bool | None:
        """Send one record; True if sent, None if over the bound (skipped), False if it cannot be pickled."""
        if query in self._unpicklable:
            return False
        if self.outstanding >= self.max_queue or self._proc.poll() is not None:
            return None
        try:
            payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError):
            self._unpicklable.add(query)
            log.info("shadow query %s: its read function does not pickle; compared in this process", query)
            return False
        with self._idle:
            self.outstanding += 1
        self._batch.append(payload)  # the sender writes the pipe: no syscall, no wake-up of the comparator here
        if not self._ready.is_set():
            self._ready.set()
        return True

    def _send_batches(self) -> None:
        """Records go in batches, every SEND_S at most: the comparator (and so a core) wakes ~20 times a second,
        not once per read."""
        while not self._closing:
            self._ready.wait()
            time.sleep(SEND_S)
            self._ready.clear()
            batch, self._batch = self._batch, []
            if batch and not self._send_batch(batch):
                break  # the comparator is gone: its pipe is closed

    def _send_batch(self, batch: list[bytes]) -> bool:
        try:
            with self._send:
                self._conn.send(batch)
        except OSError:
            return False
        return True

    def _receive(self) -> None:
        while True:
            try:
                outcomes = self._conn.recv()
            except (EOFError, OSError):
                break
            for store, label, outcome in outcomes:
                if store is not None:
                    self.on_outcome(store, label, outcome)
            with self._idle:
                self.outstanding -= len(outcomes)
                self._idle.notify_all()
        with self._idle:  # the process is gone: nothing more will come back
            self.outstanding = 0
            self._idle.notify_all()

    def wait_idle(self, deadline: float) -> bool:
        with self._idle:
            while self.outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._ready.set()
        self._sender.join(5)
        try:
            with self._send:
                if self._batch:
                    self._conn.send(self._batch)
                self._conn.send(None)  # the end
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._conn.close()
        self._receiver.join(5)


def _serve(settings: Any, reader_kwargs: dict[str, Any], conn: Any) -> None:
    """The comparator process: compare every record on both sides, send the outcomes back in batches."""
    from dualwrite.engines import Backends
    from dualwrite.shadow.experiment import Observation
    from dualwrite.shadow.reader import ShadowReader

    backends = Backends(settings)
    reader = ShadowReader(**reader_kwargs)
    done: list[tuple[str | None, str | None, str | None]] = []
    sent_at = time.monotonic()
    try:
        while True:
            # outcomes go back in batches (each wakes a thread of the application: at most ~20 a second),
            # at once when no record came for REPORT_S; the counts go to Redis with them
            if done and (time.monotonic() - sent_at >= REPORT_S or not conn.poll(REPORT_S)):
                conn.send(done)
                done = []
                reader.flush()
                sent_at = time.monotonic()
            batch = conn.recv()
            if batch is None:
                break
            for payload in batch:
                try:
                    record = pickle.loads(payload)
                except Exception as exc:  # noqa: BLE001 - e.g. the read's module is not importable here
                    log.warning("shadow comparator: a record could not be read: %r", exc)
                    done.append((None, None, None))  # settled, not counted
                    continue
                done.append((record[0], record[1], _compare(reader, backends, Observation, record)))
    except (EOFError, OSError):
        pass
    finally:
        if done:
            try:
                conn.send(done)
            except OSError:
                pass
        reader.flush()
        reader.close()
        backends.close()


def _compare(reader: Any, backends: Backends, observation: Any, record: tuple[Any, ...]) -> str:
    store, label, query, fn, params, ordered, backend, control_backend = record
    control = observation.capture("control", lambda: backends.timed_read(control_backend, store, query, fn))
    result = reader._compare(backends, backend, store, label, query, fn, params, ordered, control, control_backend)
    return "error" if result is None else result.outcome


def main(fd: int) -> None:
    """The comparator process: the application's sys.path, settings and reader options, then records."""
    conn = Connection(fd)
    path, settings, kwargs = conn.recv()
    sys.path[:0] = [p for p in path if p not in sys.path]
    _serve(settings, kwargs, conn)
