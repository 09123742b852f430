"""`dualwrite demo`: a whole cutover, end to end, while application traffic runs.

seed SQLite (history, written before dualwrite was installed) -> traffic starts (phase sqlite, changes
captured) -> dual_write -> backfill copies the history while the replayer applies the stream -> shadow
reads -> verify -> gate -> postgres_reads -> postgres_primary -> traffic stops -> final verification.
Exits non-zero if any row is lost or differs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualwrite import metrics
from dualwrite.adapter import DualWriter
from dualwrite.backfill.copier import Copier
from dualwrite.bookkeeping import create_schema
from dualwrite.cutover import gate
from dualwrite.cutover.flip import flip_postponed
from dualwrite.demo.app import tables as app_tables
from dualwrite.demo.ownership import claim
from dualwrite.demo.progress import Progress
from dualwrite.demo.synth import seed, split_counts
from dualwrite.demo.traffic import Traffic
from dualwrite.errors import ConfigError
from dualwrite.retry import outage
from dualwrite.settings import Settings
from dualwrite.shadow.reader import ShadowReader
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.verify.verifier import verify_backends

log = logging.getLogger("dualwrite.demo")
GATE_EXPORT_S = 2.0


@dataclass
class DemoResult:
    phases: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


class Demo:
    # a keyword list like tests/faults' Collector.case: nothing shared
    def __init__(
        self,
        settings: Settings,
        *,
        rows: int,
        duration: float,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        self.settings, self.rows, self.duration = settings, rows, duration
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.result = DemoResult()
        self.progress = Progress()
        self._tmp = Path(tempfile.mkdtemp(prefix="dualwrite-demo-"))

    # -- helpers ---------------------------------------------------------------------------------
    def _phase(self, dw: DualWriter, name: str, why: str) -> None:
        dw.phases.set(name, reason=why, actor="demo")
        metrics.set_phase(name)
        self.result.phases.append(
            {"phase": name, "at": datetime.now(UTC).isoformat(timespec="milliseconds"), "why": why}
        )
        self.progress.line(f"phase -> {name}: {why}")

    def _flip(self, dw: DualWriter, traffic: Traffic, relay: Relay, replayer: Replayer, why: str) -> bool:
        """Move one phase forward through the cutover gate, at a quiesced moment: writers pause (as a
        gh-ost cut-over does) until the outbox is published and replayed and the gate passes."""
        started = time.perf_counter()
        traffic.pause()
        try:
            self._settle(relay, replayer, drive=False, timeout=30)
            outcome = flip_postponed(
                dw.backends, dw.tables, deadline=30, poll=0.2, echo=self.progress.line, reason=why, actor="demo"
            )
        finally:
            traffic.resume()
        pause_ms = round((time.perf_counter() - started) * 1000, 1)
        phase = dw.phases.current(fresh=True).name
        metrics.set_phase(phase)
        self.result.phases.append(
            {
                "phase": phase,
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "why": why,
                "write_pause_ms": pause_ms,
                "gate": [c.line() for c in outcome.gate.conditions] if outcome.gate else [],
            }
        )
        self.result.checks[f"gate passed: {outcome.message}"] = outcome.moved
        self.progress.line(f"phase -> {phase}: {why} (writes paused {pause_ms} ms)")
        return outcome.moved

    def _claim(self) -> None:
        """Refuse a schema, file or namespace that is not the demo's; empty the demo's own (ownership.py)."""
        own = {t.name for t in app_tables().tables()}
        claim(self.settings, own)

    def _settle(self, relay: Relay, replayer: Replayer, *, drive: bool, timeout: float = 60) -> bool:
        """Wait until the outbox is published and the replay group has applied everything
        (drive=True: do the publishing and replaying here, the background workers being stopped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if drive:
                relay.run_once()
                replayer.step(block_ms=50)
            else:
                time.sleep(0.05)
            if relay.backlog == 0 and replayer.caught_up():
                return True
        return False

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> DemoResult:
        tables = app_tables().tables()
        self._claim()
        dw = DualWriter(self.settings, app_tables())
        try:
            server = metrics.serve(self.metrics_port, self.metrics_host) if self.metrics_port is not None else None
        except (OSError, ValueError) as exc:
            dw.close()
            raise ConfigError(metrics.listen_error(exc)) from None
        if server is not None:
            self.progress.line(f"serving /metrics and /health on {server.url}")
        try:
            return self._run(dw, tables)
        finally:
            dw.close()
            if server:
                server.close()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _run(self, dw: DualWriter, tables: list) -> DemoResult:  # type: ignore[type-arg]
        r = self.result
        create_schema(dw.backends.sqlite, tables, primary=True)
        create_schema(dw.backends.postgres, tables, primary=False)
        dw.phases.set("sqlite", force=True, reason="demo start", actor="demo")
        counts = split_counts(tables, self.rows)
        with self.progress.bar("seed SQLite history", total=sum(counts.values())) as advance:
            written = seed(dw.backends.sqlite, tables, counts, progress=lambda _t, n: advance(n))
        r.figures["rows_seeded"] = sum(written.values())
        self.progress.line(f"seeded {r.figures['rows_seeded']} rows in {len(tables)} tables")

        relay = Relay.for_backends(dw.backends)
        replayer = Replayer(dw.backends, dw.tables, consumer="demo-replayer")
        replayer.ensure_group()
        stop = threading.Event()
        bg = threading.Thread(target=self._background, args=(relay, replayer, stop, dw), daemon=True)
        bg.start()
        traffic = Traffic(dw, tables)
        traffic.start()
        self._phase(dw, "sqlite", "traffic running; changes captured in the outbox")
        time.sleep(min(2.0, self.duration / 6))
        if not self._flip(dw, traffic, relay, replayer, "every write now reaches Postgres too"):
            return self._abort(traffic, stop, bg)

        copier = Copier.for_backends(dw.backends, chunk_size=5000)
        start = time.perf_counter()
        with self.progress.bar("backfill history", total=sum(written.values())) as advance:
            reports = []
            for table in tables:
                rep = copier.copy_table(table)
                advance(rep.rows_copied)
                reports.append(rep)
        copy_s = time.perf_counter() - start
        copied = sum(rep.rows_copied for rep in reports)
        r.figures["rows_copied"] = copied
        r.figures["copy_rows_per_second"] = round(copied / copy_s, 1) if copy_s else None
        r.checks["backfill: every table done, no rejects"] = all(
            rep.status == "done" and rep.rows_rejected == 0 for rep in reports
        )

        shadow = ShadowReader(percentage=100.0, max_workers=2, max_queue=64).install(dw)
        if not self._flip(dw, traffic, relay, replayer, "reads compared against Postgres off the request path"):
            return self._abort(traffic, stop, bg)
        time.sleep(max(2.0, self.duration / 3))

        traffic.pause()
        settled = self._settle(relay, replayer, drive=False)
        vrep = verify_backends(dw.backends, tables)
        traffic.resume()
        r.checks["replay caught up before verify"] = settled
        r.checks["verify (quiesced, shadow phase): identical"] = vrep.clean
        r.figures["verify_differences"] = {
            t.table: len(t.missing) + len(t.extra) + len(t.differing) for t in vrep.tables if not t.clean
        }
        # the gate counts shadow comparisons since this clean verify: let traffic bring enough of them
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and not gate.shadow_mismatch_rate(dw.backends, dw.tables, gate.GateConfig()).ok
        ):
            time.sleep(0.1)

        if not self._flip(dw, traffic, relay, replayer, "verify clean; reads now served by Postgres"):
            return self._abort(traffic, stop, bg)
        time.sleep(max(2.0, self.duration / 6))
        if not self._flip(dw, traffic, relay, replayer, "Postgres takes the writes; SQLite still written"):
            return self._abort(traffic, stop, bg)
        time.sleep(max(2.0, self.duration / 6))

        traffic.stop()
        stop.set()
        bg.join(timeout=30)
        shadow.close()
        settled = self._settle(relay, replayer, drive=True)
        final = verify_backends(dw.backends, tables)
        r.checks["replay caught up at the end"] = settled
        r.checks["final verify (SQLite == Postgres, every row)"] = final.clean
        r.checks["no dead letters"] = dw.backends.redis.xlen(f"{self.settings.namespace}:changes:dead") == 0
        r.figures["traffic"] = dict(traffic.stats)
        r.figures["traffic_errors"] = dict(traffic.errors)
        if traffic.samples:
            r.figures["traffic_error_samples"] = traffic.samples
        r.figures["events_published"] = relay.published
        r.figures["events_replayed"] = replayer.stats.as_dict()
        r.figures["shadow"] = dict(shadow.stats)
        r.figures["latency_ms"] = self.progress.latency_table()
        return r

    def _abort(self, traffic: Traffic, stop: threading.Event, bg: threading.Thread) -> DemoResult:
        traffic.stop()
        stop.set()
        bg.join(timeout=30)
        return self.result

    def _background(self, relay: Relay, replayer: Replayer, stop: threading.Event, dw: DualWriter) -> None:
        exported = 0.0

        def one_round() -> None:
            nonlocal exported
            relay.run_once()
            replayer.step(block_ms=100)
            if self.metrics_port is not None and time.monotonic() - exported >= GATE_EXPORT_S:
                exported = time.monotonic()
                gate.export(dw.backends, dw.tables)  # the gate panels, as the backfill daemon exports them

        def on_failure(exc: BaseException, _wait: float) -> None:
            log.error("background round failed", exc_info=exc)

        # the demo's workers keep going, like the daemon (retry.outage, for any failure)
        rounds = outage(stop.is_set, on_failure, errors=(Exception,))
        while not stop.is_set():
            try:
                rounds(one_round)
            except Exception:  # noqa: BLE001 - stopped while waiting out a failure
                break
