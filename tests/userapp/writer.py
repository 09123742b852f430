"""A writer process of the application: ORM and Core transactions through a DualWriter at a steady rate,
until SIGTERM/SIGINT (or --duration / --max-tx), every transaction logged.

    python -m tests.userapp.writer --name w1 --index 1 --log DIR/w1.jsonl --stats DIR/w1.json \\
        --sqlite app.db --postgres URL --redis URL --namespace NS --pg-schema S --state-schema S_dw \\
        [--rate 20] [--apis orm,core] [--population 60] [--documents 1.0] [--reads 0.2] [--shadow 100]
        [--comparator thread|process] [--compare-wait 10] [--metrics-port 0] [--plain]

--plain: the application before dualwrite (tests/userapp/plain.py): its own engine on the SQLite file, no
reads, the same transactions and log.

Connection flags default to the DUALWRITE_* environment, as every dualwrite command does. The log gets,
for each transaction, its intended changes (written inside the transaction, just before it commits,
status "pending") and then its outcome ("committed" with its duration in ms, or "failed" with the error);
state.py turns the logs back into the rows the databases must hold. The stats file (JSON, rewritten
every half second and at exit) counts committed transactions, errors by kind with the first messages,
reads (those in a phase with shadow reads) and reads that disagreed with the writer's own rows, the
shadow reader's outcome counts, the longest read (the request path: the read alone, not its comparison), and
the phases seen; at exit also what its metrics registry holds of reads and comparisons, per query (`metrics`).
With --metrics-port the process serves /metrics (dualwrite.metrics.serve), its address in the stats.

A transaction that failed is in doubt until its ledger row is looked up (models.Ledger): the writer
does that on both backends before going on, so its own view of its rows stays right.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dualwrite import DualWriter, Tables, load_settings
from dualwrite.errors import first_line
from tests.userapp.models import Base, Ledger
from tests.userapp.plain import PlainApp
from tests.userapp.state import Schema, State, Tx, read_log
from tests.userapp.workload import Workload

log = logging.getLogger("tests.userapp.writer")
MAX_SAMPLES = 20


def tables() -> Tables:
    """The application's tables, as `--metadata tests.userapp.writer:tables` would give them."""
    return Tables.of(Base.metadata, store="shop")


class Stats:
    def __init__(self, path: Path | None, name: str) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "name": name,
            "pid": os.getpid(),
            "committed": 0,
            "errors": 0,
            "error_kinds": {},
            "error_samples": [],
            "in_doubt_committed": 0,
            "reads": 0,
            "shadow_reads": 0,
            "shadow_reads_by_query": {},
            "unsure_reads": 0,
            "shadow": {},
            "shadow_local_queries": [],
            "read_errors": 0,
            "read_disagreements": 0,
            "phases": [],
            "started_at": time.time(),
            "updated_at": time.time(),
            "stopped": False,
            "max_ms": 0.0,
            "read_max_ms": 0.0,
        }
        self._written = 0.0

    def error(self, kind: str, exc: BaseException, what: str) -> None:
        self.doc[kind] += 1
        name = type(exc).__name__
        self.doc["error_kinds"][name] = self.doc["error_kinds"].get(name, 0) + 1
        if len(self.doc["error_samples"]) < MAX_SAMPLES:
            self.doc["error_samples"].append(f"{what}: {name}: {first_line(exc, 300)}")

    def phase(self, name: str) -> None:
        if not self.doc["phases"] or self.doc["phases"][-1] != name:
            self.doc["phases"].append(name)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if self.path is None or (not force and now - self._written < 0.5):
            return
        self.doc["updated_at"] = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc))
        tmp.replace(self.path)
        self._written = now


class Writer:
    """The loop of one writer process (usable in-process too: tests may drive `run` from a thread)."""

    def __init__(
        self,
        dw: DualWriter,
        name: str,
        index: int,
        log_path: Path,
        stats: Stats,
        *,
        rate: float,
        reads: float = 0.0,
        compare_wait: float = 10.0,
        **workload: Any,
    ) -> None:
        self.dw, self.name, self.rate, self.reads = dw, name, rate, reads
        self.compare_wait = compare_wait
        self.stats = stats
        schema = Schema.of(Base.metadata)
        state = State(schema)
        start_n = 0
        if log_path.exists():  # a restarted writer goes on from its own log
            for tx in read_log(log_path, schema):
                if tx.status == "committed" or self.committed(tx.n):
                    state.apply_tx(tx)
                start_n = tx.n
        self.log = log_path.open("a", encoding="utf-8")
        if start_n:  # a stream of its own: the first run's would hand out its orders' UUIDs again
            workload["seed"] = f"{workload.get('seed', 0)}:after-{start_n}"
        self.work = Workload(dw, name, index, state, pending=self._pending, **workload)
        self.work.n = start_n
        self.work.counter = start_n * 10  # keys chosen by the writer stay unique across restarts
        self.stop = threading.Event()

    def _pending(self, tx: Tx) -> None:
        self.log.write(json.dumps(tx.pending_json()) + "\n")
        self.log.flush()

    def _outcome(self, tx: Tx, status: str, **extra: Any) -> None:
        self.log.write(json.dumps({"writer": self.name, "n": tx.n, "status": status, **extra}) + "\n")
        self.log.flush()

    def committed(self, n: int) -> bool:
        """Whether this writer's transaction n committed: its ledger row on either backend."""
        plain = getattr(self.dw, "ledger_engines", None)  # a PlainApp: its SQLite file alone
        for engine in plain or (self.dw.backends.sqlite_read, self.dw.backends.postgres):
            try:
                with engine.connect() as conn:
                    found = conn.execute(select(Ledger.n).where(Ledger.writer == self.name, Ledger.n == n)).first()
                    conn.rollback()
            except Exception:  # noqa: BLE001 - a backend down: the other one decides
                continue
            if found is not None:
                return True
        return False

    def once(self) -> None:
        self.stats.phase(self.dw.phases.current().name)
        work = self.work
        op = work.choose()
        start = time.perf_counter()
        try:
            tx = work.step(op)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and resolved
            tx = Tx(self.name, work.n, op, "?")
            self.stats.error("errors", exc, op)
            log.warning("%s: %s failed: %s", self.name, op, first_line(exc, 300))
            self._outcome(tx, "failed", error=f"{type(exc).__name__}: {first_line(exc, 300)}")
            time.sleep(0.5)  # the replay may still be applying it: then look it up
            if self.committed(tx.n):
                self.stats.doc["in_doubt_committed"] += 1
                self._reapply_from_log(tx.n)
            return
        ms = (time.perf_counter() - start) * 1000
        self._outcome(tx, "committed", ms=round(ms, 3))
        work.state.apply_tx(tx)
        self.stats.doc["committed"] += 1
        self.stats.doc["max_ms"] = max(self.stats.doc["max_ms"], ms)

    def _reapply_from_log(self, n: int) -> None:
        """A failed transaction that did commit: apply its logged intent to the writer's own state."""
        self.log.flush()
        for tx in read_log(self.log.name, self.work.state.schema):
            if tx.n == n and tx.changes:
                self.work.state.apply_tx(tx)

    def read_once(self) -> None:
        before = self.dw.phases.current()
        start = time.perf_counter()
        try:
            agreed = self.work.read()
        except Exception as exc:  # noqa: BLE001
            self.stats.error("read_errors", exc, "read")
            return
        ms = (time.perf_counter() - start) * 1000
        self.stats.doc["read_max_ms"] = max(self.stats.doc["read_max_ms"], ms)
        after = self.dw.phases.current()
        self.stats.doc["reads"] += 1
        # the phase the read saw, when the phase did not change around it: how many reads a shadow reader
        # at 100% must have compared (or skipped)
        if before.name != after.name:
            self.stats.doc["unsure_reads"] += 1
        elif before.shadow:
            self.stats.doc["shadow_reads"] += 1
            per_query = self.stats.doc["shadow_reads_by_query"]
            per_query[self.work.last_query] = per_query.get(self.work.last_query, 0) + 1
        if not agreed:
            self.stats.doc["read_disagreements"] += 1
        if self.dw.reader is not None:
            # The comparison runs off the request path; the writer lets it finish before its next write, so
            # it never races the writer's own next change to the same rows: any mismatch is then real. With
            # compare_wait 0 it goes on at once, as an application does (a race then settles "ignored").
            if self.compare_wait > 0:
                self.dw.reader.wait_idle(self.compare_wait)
            self.shadow_stats()

    def shadow_stats(self) -> None:
        """The shadow reader's own outcome counts (the comparator process' sent back), into the stats."""
        reader = self.dw.reader
        if reader is not None:
            self.stats.doc["shadow"] = dict(reader.stats)
            seen = set(self.stats.doc["shadow_local_queries"]) | reader.local_queries  # a closed reader forgets
            self.stats.doc["shadow_local_queries"] = sorted(seen)

    def run(self, *, duration: float | None = None, max_tx: int | None = None) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        end = None if duration is None else time.monotonic() + duration
        done = 0
        while not self.stop.is_set():
            if end is not None and time.monotonic() >= end or max_tx is not None and done >= max_tx:
                break
            self.once()
            done += 1
            if self.reads and self.work.v.r.random() < self.reads:
                self.read_once()
            self.stats.write()
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                elif delay < -1.0:  # far behind (a pause): do not burst to catch up
                    next_at = time.monotonic()
        self.stats.doc["stopped"] = True
        self.stats.write(force=True)

    def close(self) -> None:
        self.log.close()


def metric_counts() -> dict[str, dict[str, Any]]:
    """What this process' metrics registry holds of its reads (per query) and shadow comparisons (per query
    and result): the numbers its /metrics shows, read from the registry itself at exit."""
    from prometheus_client import REGISTRY

    reads: dict[str, int] = {}
    shadow: dict[str, dict[str, int]] = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "dualwrite_read_duration_seconds_count":
                reads[s.labels["query"]] = reads.get(s.labels["query"], 0) + int(s.value)
            elif s.name == "dualwrite_shadow_comparisons_total":
                shadow.setdefault(s.labels["query"], {})[s.labels["result"]] = int(s.value)
    return {"reads": reads, "shadow": shadow}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.userapp.writer", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--index", type=int, required=True, help="0-2000: high digits of the keys it chooses")
    p.add_argument("--log", required=True)
    p.add_argument("--stats", default=None)
    for flag in ("sqlite", "postgres", "redis", "namespace", "pg-schema", "state-schema"):
        p.add_argument(f"--{flag}", default=None)
    p.add_argument("--rate", type=float, default=20.0, help="transactions per second (0: as fast as possible)")
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--max-tx", type=int, default=None)
    p.add_argument("--apis", default="orm,core")
    p.add_argument("--population", type=int, default=60, help="rows per table the writer keeps near")
    p.add_argument("--documents", type=float, default=1.0, help="weight of the 1 MB documents (0: none)")
    p.add_argument("--reads", type=float, default=0.0, help="chance of a read after each transaction")
    p.add_argument("--shadow", type=float, default=0.0, help="percentage of reads shadow-compared (0: no reader)")
    p.add_argument("--comparator", choices=("thread", "process"), default="thread", help="where shadow reads compare")
    p.add_argument(
        "--compare-wait", type=float, default=10.0, help="seconds a read waits for its comparisons (0: not at all)"
    )
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on 127.0.0.1 (0: any free port)")
    p.add_argument("--seed", default="0")
    p.add_argument("--no-relay", action="store_true", help="do not run the outbox relay in this process")
    p.add_argument("--plain", action="store_true", help="the application before dualwrite: SQLAlchemy on --sqlite")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    settings = load_settings(
        sqlite_url=args.sqlite,
        postgres_url=args.postgres,
        redis_url=args.redis,
        namespace=args.namespace,
        pg_schema=args.pg_schema,
        state_schema=args.state_schema,
    )
    dw: Any = PlainApp(settings.sqlite_url) if args.plain else DualWriter(settings, tables(), relay=not args.no_relay)
    reader = None
    if args.shadow > 0 and not args.plain:
        from dualwrite.shadow import ShadowReader

        reader = ShadowReader(percentage=args.shadow, comparator=args.comparator).install(dw)
    stats = Stats(Path(args.stats) if args.stats else None, args.name)
    endpoint = None
    if args.metrics_port is not None:
        from dualwrite import metrics

        endpoint = metrics.serve(args.metrics_port)
        stats.doc["metrics_url"] = endpoint.url + "/metrics"
    writer = Writer(
        dw,
        args.name,
        args.index,
        Path(args.log),
        stats,
        rate=args.rate,
        reads=args.reads,
        compare_wait=args.compare_wait,
        seed=args.seed,
        apis=tuple(a.strip() for a in args.apis.split(",") if a.strip()),
        population=args.population,
        documents=args.documents,
    )

    def stop(_signum: int, _frame: object) -> None:
        writer.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        writer.run(duration=args.duration, max_tx=args.max_tx)
    finally:
        if reader is not None:
            closing = time.monotonic()
            reader.close()  # its last outcomes counted
            stats.doc["shadow_close_s"] = round(time.monotonic() - closing, 3)
            writer.shadow_stats()
        stats.doc["metrics"] = metric_counts()
        stats.write(force=True)
        if endpoint is not None:
            endpoint.close()
        writer.close()
        dw.close()  # stops the relay after a last round: the outbox is published
    return 0


if __name__ == "__main__":
    sys.exit(main())
