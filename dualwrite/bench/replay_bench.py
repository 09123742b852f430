"""Section 5: replay throughput (stream.replay.Replayer): events/s from the Redis stream into Postgres by 1 and
2 workers, vs applying the same events, decoded from the same payloads, with the apply rule and no Redis (the
baseline: `DualWriter.apply`, the inline path); and the replay lag under a steady write load like the demo's
(3 writers, 10 ms between writes).

Workers run in their own processes (replay_procs.py), as `dualwrite backfill run` does (threads would share
one GIL). Each builds its writer, connects and reads the table's catalog (the baseline is as warm), says
"ready", waits for "go", replays until the group has nothing left and reports its start and the end of its
last batch (wall clock), so neither interpreter start-up nor the final empty poll is counted. Baseline and replays run
interleaved, in mirrored order (_one_run), RUNS times; the goals are the medians of the per-run ratios, with
their spread. Beside each figure the CPU per event of the processes, their Postgres backends and the Redis
server: on two shared cores, two workers scale only as far as the CPU the rest of the machine leaves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from sqlalchemy import insert, select, update

from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, mirrored, ratio, rows
from dualwrite.bench.goals import goal, median

BATCH = 500
RUNS = 3
LOAD_WRITERS, LOAD_PAUSE_S = 3, 0.01  # the demo's Traffic defaults
PER_WORKER_GOAL, SCALING_GOAL = 0.9, 1.7


def _spawn(settings: Any, group: str, consumer: str, mode: str) -> subprocess.Popen[str]:
    names = ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema", "state_schema", "stream_retention")
    conf = {k: getattr(settings, k) for k in names}
    cmd = [sys.executable, "-m", "dualwrite.bench.replay_procs", json.dumps(conf), group, consumer, mode]
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
        redis0 = _redis_cpu(dw.backends.redis)
        reports = _results(_workers(dw.settings, f"bench-{label}", n), timeout=1800)
        redis_s = _redis_cpu(dw.backends.redis) - redis0
        with dw.backends.postgres.connect() as conn:
            landed = len(conn.execute(select(table.c.id)).all())
    finally:
        dw.close()
    applied = sum(r["stats"]["applied"] for r in reports)
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    eps = applied / seconds if seconds else 0.0
    dead = sum(r["stats"]["dead"] for r in reports)
    out = {"events_per_s": eps, "applied": applied, "seconds": seconds, "landed": landed, "dead": dead}
    cpu = cpu_per_event(reports)
    return {**out, "cpu": {**cpu, "redis_us": round(1e6 * redis_s / (applied or 1), 1)} if cpu else {}}


def _redis_cpu(client: Any) -> float:
    """CPU seconds the Redis server has used (all its clients: the workers' share when nothing else is busy)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def direct_apply(env: BenchEnv, table: Any, payloads: list[bytes], label: str) -> float:
    """The baseline: decode the stream's payloads and apply them in batches of BATCH with DualWriter.apply
    (the inline apply: autocommit, one statement per batch), into a fresh schema. Returns seconds."""
    from dualwrite.apply.statements import statements
    from dualwrite.events import ChangeEvent
    from dualwrite.stream.gc_batches import batch_gc
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings(label), bench_tables(table), phase="sqlite")
    try:
        statements.get(dw.backends.postgres_direct, table)  # connected, catalog read: as warm as a worker
        t0 = time.perf_counter()
        with batch_gc(BATCH):  # the collector as the Replayer runs it (stream/gc_batches): only Redis differs
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


def _one_run(env: BenchEnv, ns: str, md: Any, table: Any, payloads: list[bytes], i: int) -> dict[str, Any]:
    """One run: direct, 1 worker, 2 workers, the ceiling's 1 and 2 processes, then the same in reverse order
    (common.mirrored: in a fixed order 1 worker always ran just before 2); each figure the mean of its two."""
    keep = len(payloads)
    order = ["direct", "w1", "w2", "c1", "c2"]
    got: dict[str, list[Any]] = {k: [] for k in order}
    for half, name in mirrored(order):
        label = f"replay_{name}_{i}{'ab'[half]}"
        if name == "direct":
            got[name].append(len(payloads) / (direct_apply(env, table, payloads, label) or float("inf")))
        elif name.startswith("w"):
            got[name].append(replay_with_workers(env, ns, md, table, int(name[1]), label, keep=keep))
        else:
            got[name].append(direct_apply_procs(env, ns, table, int(name[1]), label))
    w1, w2 = (_mean_run(got[k]) for k in ("w1", "w2"))
    c1, c2 = (sum(eps for eps, _cpu in got[k]) / 2 for k in ("c1", "c2"))
    cpu = {"w1": w1["cpu"], "w2": w2["cpu"], "direct_p1": _mean_cpu([c for _e, c in got["c1"]])}
    cpu["direct_p2"] = _mean_cpu([c for _e, c in got["c2"]])
    # the cores one worker keeps busy (its process, its backend, Redis): two can scale only into what is left
    w1_cores = round(w1["events_per_s"] * sum(w1["cpu"].values()) / 1e6, 2) if w1["cpu"] else None
    out = {"direct": sum(got["direct"]) / 2, "w1": w1, "w2": w2, "ceiling": ratio(c2, c1) or 0.0, "cpu": cpu}
    return {**out, "w1_cores": w1_cores, "load_1min": round(os.getloadavg()[0], 1)}


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{min(known)}-{max(known)}" if known else "?"


def _mean_run(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Two replay_with_workers results as one: mean events/s and CPU; the fewest rows landed, the most dead."""
    eps = sum(r["events_per_s"] for r in reports) / len(reports)
    landed, dead = min(r["landed"] for r in reports), max(r["dead"] for r in reports)
    return {"events_per_s": eps, "landed": landed, "dead": dead, "cpu": _mean_cpu([r["cpu"] for r in reports])}


def _mean_cpu(readings: list[dict[str, float]]) -> dict[str, float]:
    if not readings or not all(readings):
        return {}
    return {k: round(sum(r[k] for r in readings) / len(readings), 1) for k in readings[0]}


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
        for i in range(runs):
            r = _one_run(env, ns, md, table, payloads, i)
            per_run.append(r)
            log(
                f"  replay run {i + 1}/{runs}: direct {r['direct']:.0f} events/s, 1 worker "
                f"{r['w1']['events_per_s']:.0f}, 2 workers {r['w2']['events_per_s']:.0f}; direct apply 2 processes "
                f"vs 1: {r['ceiling']}x; one worker kept {r['w1_cores']} cores busy (load {r['load_1min']}); "
                f"CPU us/event (process, its Postgres backend; Redis): {r['cpu']}"
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
                f"spread {min(r['ceiling'] for r in per_run)}-{max(r['ceiling'] for r in per_run)}x; one worker "
                f"kept {_spread([r['w1_cores'] for r in per_run])} of the {os.cpu_count()} cores busy (process, "
                f"backend, Redis), at load average {_spread([r['load_1min'] for r in per_run])}",
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
                    "w1_cores": r["w1_cores"],
                    "load_1min": r["load_1min"],
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


def cpu_per_event(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Microseconds of CPU per applied event: the worker processes', their Postgres backends'."""
    applied = sum(r["stats"]["applied"] for r in reports) or 1
    if not all("cpu_s" in r for r in reports):
        return {}
    return {f"{k[:-2]}_us": round(1e6 * sum(r[k] for r in reports) / applied, 1) for k in ("cpu_s", "pg_cpu_s")}
