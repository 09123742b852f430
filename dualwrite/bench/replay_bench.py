"""Section 5: replay throughput (stream.replay.Replayer): events/s from the Redis stream into Postgres by 1 and
2 workers, vs applying the same events, decoded from the same payloads, with the apply rule and no Redis (the
baseline: `DualWriter.apply`, the inline path); and the replay lag under a steady write load like the demo's
(3 writers, 10 ms between writes).

Workers run in their own processes (as `dualwrite backfill run` does; threads would share one GIL). Each
builds its writer, connects and reads the table's catalog (the baseline is as warm), says "ready", waits for
"go", replays until the group has nothing left and reports its start and the end of its last batch (wall
clock), so neither interpreter start-up nor the final empty poll is counted. Baseline and replays run
interleaved, RUNS times; the goals are the medians of the per-run ratios, with their spread."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from sqlalchemy import insert, select, update

from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, ratio, rows
from dualwrite.bench.goals import goal, median

BATCH = 500
RUNS = 3
LOAD_WRITERS, LOAD_PAUSE_S = 3, 0.01  # the demo's Traffic defaults
PER_WORKER_GOAL, SCALING_GOAL = 0.9, 1.7


def _spawn(settings: Any, group: str, consumer: str, mode: str) -> subprocess.Popen[str]:
    names = ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema", "state_schema", "stream_retention")
    conf = {k: getattr(settings, k) for k in names}
    cmd = [sys.executable, "-m", "dualwrite.bench.replay_bench", json.dumps(conf), group, consumer, mode]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _workers(settings: Any, group: str, n: int, mode: str = "once") -> list[subprocess.Popen[str]]:
    procs = [_spawn(settings, group, f"w{i}", mode) for i in range(n)]  # direct mode: consumer w<i> = share i
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", "replay worker did not start"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs


def _results(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Tell a daemon-mode worker to stop once caught up; its report."""
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    (report,) = _results([proc], timeout=60)
    return report


def replay_with_workers(env: BenchEnv, ns: str, md: Any, table: Any, n: int, label: str, keep: int) -> dict[str, Any]:
    """Replay the whole stream into a fresh schema with n worker processes of one new group: events/s over
    the first start to the last end, events applied, rows that landed. keep: the stream's length, the
    workers' stream_retention (their trimmer, still run, must leave the stream whole for the next runs;
    with the default 10,000 the first run cut a 100k stream and the later ones replayed a tenth of it)."""
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings(label).with_(namespace=ns, stream_retention=keep), bench_tables(table))
    try:
        reports = _results(_workers(dw.settings, f"bench-{label}", n), timeout=1800)
        with dw.backends.postgres.connect() as conn:
            landed = len(conn.execute(select(table.c.id)).all())
    finally:
        dw.close()
    applied = sum(r["stats"]["applied"] for r in reports)
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    eps = applied / seconds if seconds else 0.0
    dead = sum(r["stats"]["dead"] for r in reports)
    out = {"events_per_s": eps, "applied": applied, "seconds": seconds, "landed": landed, "dead": dead}
    return {**out, "cpu": cpu_per_event(reports)}


def direct_apply(env: BenchEnv, table: Any, payloads: list[bytes], label: str) -> float:
    """The baseline: decode the stream's payloads and apply them in batches of BATCH with DualWriter.apply
    (the inline apply: autocommit, one statement per batch), into a fresh schema. Returns seconds."""
    from dualwrite.apply.statements import statements
    from dualwrite.events import ChangeEvent
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings(label), bench_tables(table), phase="sqlite")
    try:
        statements.get(dw.backends.postgres_direct, table)  # connected, catalog read: as warm as a worker
        t0 = time.perf_counter()
        for i in range(0, len(payloads), BATCH):
            dw.apply("postgres", [ChangeEvent.from_json(p) for p in payloads[i : i + BATCH]])
        return time.perf_counter() - t0
    finally:
        dw.close()


def direct_apply_procs(env: BenchEnv, ns: str, table: Any, n: int, label: str) -> tuple[float, dict[str, float]]:
    """The machine's ceiling for n workers: n processes each decode and directly apply (no Redis reads, no
    acks) every n-th batch of the stream's payloads into one fresh schema. Returns events/s and the CPU
    per event (cpu_per_event)."""
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings(label).with_(namespace=ns), bench_tables(table), phase="sqlite")
    try:
        reports = _results(_workers(dw.settings, "-", n, mode=f"direct:{n}"), timeout=1800)
    finally:
        dw.close()
    applied = sum(r["stats"]["applied"] for r in reports)
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return (applied / seconds if seconds else 0.0), cpu_per_event(reports)


def lag_under_load(env: BenchEnv, md: Any, table: Any, seconds: float) -> dict[str, Any]:
    """Phase sqlite (Postgres gets nothing inline: every event waits for the replay), the relay in the
    background, one replay worker, the demo's writers for `seconds`; lag sampled every 0.1 s."""
    from dualwrite.stream.protocol import group_lag
    from dualwrite.stream.relay import Relay
    from dualwrite.stream.replay import Replayer
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings("replay_load"), bench_tables(table))
    relay = Relay.for_backends(dw.backends)
    stop = threading.Event()
    written = [0] * LOAD_WRITERS

    def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            key = 1_000_000 * (i + 1) + n // 2
            with dw.begin() as tx:  # an insert, then an update of it: the demo's mix of new and changed rows
                if n % 2 == 0:
                    tx.execute(insert(table), rows(table, 1, start=key))
                else:
                    tx.execute(update(table).where(table.c.id == key).values(title=f"changed {n}"))
            n += 1
            written[i] = n
            time.sleep(LOAD_PAUSE_S)

    try:
        rp = Replayer(dw.backends, dw.tables, group="bench-load")
        rp.ensure_group()
        (proc,) = _workers(dw.settings, "bench-load", 1, mode="daemon")
        relay.start()
        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(LOAD_WRITERS)]
        samples: list[int] = []
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - t0 < seconds:
            samples.append(sum(group_lag(dw.backends.redis, rp.key, rp.group)))
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        load_s = time.monotonic() - t0
        t_stop = time.monotonic()
        relay.stop()  # from here on publish in this thread, so "backlog 0" covers the last writes
        while relay.run_once() or relay.backlog or sum(group_lag(dw.backends.redis, rp.key, rp.group)):
            if time.monotonic() - t_stop > 120:
                break
            time.sleep(0.01)
        drain_s = time.monotonic() - t_stop
        report = _stop(proc)
        events = report["stats"]["applied"] + report["stats"]["stale"]
        return {
            "writes": sum(written),
            "writes_per_s": round(sum(written) / load_s, 1),
            "events_replayed": events,
            "max_lag_events": max(samples, default=0),
            "mean_lag_events": round(sum(samples) / len(samples), 1) if samples else 0,
            "samples_at_zero_lag_pct": round(100 * samples.count(0) / len(samples), 1) if samples else 0,
            "seconds_to_zero_after_writes_stop": round(drain_s, 3),
        }
    finally:
        stop.set()
        relay.stop()
        dw.close()


def run(env: BenchEnv, events: int, log: Any = print, runs: int = RUNS) -> dict[str, Any]:
    from dualwrite.redis_keys import stream_key
    from dualwrite.stream.protocol import EVENT_FIELD
    from dualwrite.stream.relay import Relay
    from dualwrite.testing import prepared_writer

    md, table = bench_metadata()
    dw = prepared_writer(env.settings("replay"), bench_tables(table), phase="sqlite")
    try:
        data = rows(table, events)
        step = 100
        for i in range(0, len(data), step):  # captured writes: outbox rows, Postgres not written (phase sqlite)
            with dw.begin() as tx:
                tx.execute(insert(table), data[i : i + step])
        relay = Relay.for_backends(dw.backends)
        if not relay.drain(timeout=600):
            return {"skipped": "relay did not drain the outbox"}
        entries = dw.backends.redis.xrange(stream_key(dw.settings.namespace))
        payloads = [f[EVENT_FIELD] for _id, f in entries]
        ns = dw.settings.namespace
        per_run: list[dict[str, Any]] = []
        for i in range(runs):  # interleaved, so drift of the shared machine hits each alike
            base_s = direct_apply(env, table, payloads, f"replay_base{i}")
            one = replay_with_workers(env, ns, md, table, 1, f"replay_r{i}_w1", keep=len(payloads))
            two = replay_with_workers(env, ns, md, table, 2, f"replay_r{i}_w2", keep=len(payloads))
            ceil1, cpu1 = direct_apply_procs(env, ns, table, 1, f"replay_c{i}_p1")
            ceil2, cpu2 = direct_apply_procs(env, ns, table, 2, f"replay_c{i}_p2")
            base_eps = len(payloads) / base_s if base_s else 0.0
            cpu = {"w1": one["cpu"], "w2": two["cpu"], "direct_p1": cpu1, "direct_p2": cpu2}
            per_run.append(
                {"direct": base_eps, "w1": one, "w2": two, "ceiling": ratio(ceil2, ceil1) or 0.0, "cpu": cpu}
            )
            log(
                f"  replay run {i + 1}/{runs}: direct {base_eps:.0f} events/s, 1 worker {one['events_per_s']:.0f}, "
                f"2 workers {two['events_per_s']:.0f}; direct apply 2 processes vs 1: {ratio(ceil2, ceil1)}x; "
                f"CPU us/event (process, its Postgres backend): {cpu}"
            )
        direct = median([r["direct"] for r in per_run])
        w1 = median([r["w1"]["events_per_s"] for r in per_run])
        w2 = median([r["w2"]["events_per_s"] for r in per_run])
        results: list[dict[str, Any]] = [
            {"method": "direct apply", "events_per_s": round(direct, 1), "ratio": 1.0},
            {"method": "Replayer", "events_per_s": round(w1, 1), "ratio": ratio(w1, direct)},
            {"method": "Replayer x2 workers", "events_per_s": round(w2, 1), "ratio": ratio(w2, direct)},
        ]
        goals = [
            goal(
                "replay, one worker, vs direct apply (decoding included)",
                section="replay",
                target=PER_WORKER_GOAL,
                higher_is_better=True,
                baseline="decode + DualWriter.apply of the same payloads in batches of 500, no Redis",
                ratios=[ratio(r["w1"]["events_per_s"], r["direct"]) for r in per_run],
                value=w1,
                baseline_value=direct,
                unit="events/s",
            ),
            goal(
                "replay, two workers vs one",
                section="replay",
                target=SCALING_GOAL,
                higher_is_better=True,
                baseline="one Replayer worker, same run; the machine's ceiling (direct apply, 2 processes vs 1, "
                f"same runs): median {round(median([r['ceiling'] for r in per_run]), 3)}x, "
                f"spread {min(r['ceiling'] for r in per_run)}-{max(r['ceiling'] for r in per_run)}x",
                ratios=[ratio(r["w2"]["events_per_s"], r["w1"]["events_per_s"]) for r in per_run],
                value=w2,
                baseline_value=w1,
                unit="events/s",
            ),
        ]
        lost = [r for r in per_run for w in ("w1", "w2") if r[w]["landed"] != len(payloads) or r[w]["dead"]]
        load = lag_under_load(env, md, table, seconds=min(10.0, max(2.0, events / 10_000)))
        log(
            f"  under {load['writes_per_s']} writes/s: lag max {load['max_lag_events']} events, at 0 in "
            f"{load['samples_at_zero_lag_pct']} % of samples, 0 {load['seconds_to_zero_after_writes_stop']} s "
            "after the writes stop"
        )
        return {
            "events": len(payloads),
            "runs": runs,
            "baseline": "decode + direct apply (DualWriter.apply, no Redis), same payloads",
            "results": results,
            "per_run": [
                {
                    "direct_events_per_s": round(r["direct"], 1),
                    **{f"{w}_events_per_s": round(r[w]["events_per_s"], 1) for w in ("w1", "w2")},
                    "direct_2_vs_1_processes": r["ceiling"],
                    "cpu_us_per_event": r["cpu"],
                }
                for r in per_run
            ],
            "incomplete_runs": len(lost),
            "goals": goals,
            "lag_under_load": load,
        }
    finally:
        dw.close()


def _worker(conf: dict[str, str], group: str, consumer: str, mode: str) -> None:
    """One replay worker process: ready (connected, catalog read), go, replay (until caught up, or until
    "stop" on stdin), report its start and the end of its last batch."""
    from dualwrite.adapter import DualWriter
    from dualwrite.apply.statements import statements
    from dualwrite.settings import load_settings
    from dualwrite.stream.replay import Replayer

    _md, table = bench_metadata()
    dw = DualWriter(load_settings(env={}, **conf), bench_tables(table), relay=False)
    if mode.startswith("direct:"):
        return _direct_worker(dw, table, int(consumer[1:]), int(mode.split(":")[1]))
    rp = Replayer(dw.backends, dw.tables, group=group, consumer=consumer, batch=BATCH, block_ms=50)
    rp.ensure_group()
    statements.get(dw.backends.postgres_direct, table)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = _cpu(dw)
    start = time.time()
    if mode == "daemon":
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
        stats = rp.run(should_stop=stop.is_set)
        end = time.time()
    else:
        # run(once=True) as `dualwrite backfill replay --once` runs (its read-ahead included), timing the end
        # of the last batch rather than the final empty poll
        last = [start]
        step = rp.step

        def timed_step(block_ms: int | None = None) -> int:
            n = step(block_ms)
            if n:
                last[0] = time.time()
            return n

        rp.step = timed_step  # type: ignore[method-assign]
        stats = rp.run(once=True)
        end = last[0]
    print(json.dumps({"start": start, "end": end, "stats": stats.as_dict(), **_cpu(dw, c0)}), flush=True)
    dw.close()


def _direct_worker(dw: Any, table: Any, share: int, n: int) -> None:
    """One process of the ceiling: read the stream once before "go", then decode and apply every n-th
    batch (starting at `share`) directly, as direct_apply does."""
    from dualwrite.apply.statements import statements
    from dualwrite.events import ChangeEvent
    from dualwrite.redis_keys import stream_key
    from dualwrite.stream.protocol import EVENT_FIELD

    payloads = [f[EVENT_FIELD] for _id, f in dw.backends.redis.xrange(stream_key(dw.settings.namespace))]
    statements.get(dw.backends.postgres_direct, table)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = _cpu(dw)
    start, applied = time.time(), 0
    for i in range(share * BATCH, len(payloads), n * BATCH):
        batch = [ChangeEvent.from_json(p) for p in payloads[i : i + BATCH]]
        dw.apply("postgres", batch)
        applied += len(batch)
    print(json.dumps({"start": start, "end": time.time(), "stats": {"applied": applied}, **_cpu(dw, c0)}), flush=True)
    dw.close()


def _cpu(dw: Any, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process and by the Postgres backend of its apply connection (the
    pool's one: only the main thread applies); with `since` (an earlier reading), used since then. Two
    workers on two cores are bound by CPU per event, not latency. Empty where /proc cannot be read (not
    Linux, or Postgres on another host)."""
    import os

    from sqlalchemy import text

    try:
        with dw.backends.postgres_direct.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    now = {"cpu_s": time.process_time(), "pg_cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}
    if since is None:
        return now
    return {k: v - since[k] for k, v in now.items()} if since else {}  # {}: the first reading failed


def cpu_per_event(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Microseconds of CPU per applied event: the worker processes', their Postgres backends'."""
    applied = sum(r["stats"]["applied"] for r in reports) or 1
    if not all("cpu_s" in r for r in reports):
        return {}
    return {f"{k[:-2]}_us": round(1e6 * sum(r[k] for r in reports) / applied, 1) for k in ("cpu_s", "pg_cpu_s")}


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
