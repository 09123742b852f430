"""Section 4: history copy throughput of one generated SQLite file into Postgres: our backfill Copier vs raw
`COPY FROM STDIN` (psycopg 3) vs `dualwrite migrate` vs pgloader vs SQLAlchemy executemany. Each method runs
in its own process into its own schema (pgloader: its own database); rows/s over the process's wall time
(start-up included, alike for all) and the process's peak RSS (getrusage(RUSAGE_CHILDREN) in a tiny launcher process
per method, see rss_launcher.py). Goal: Copier >= 1.0 x pgloader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from dualwrite.bench.common import BenchEnv, bench_metadata, ratio
from dualwrite.bookkeeping import create_schema
from dualwrite.demo.synth import seed
from dualwrite.engines import postgres_engine, sqlite_engine

GOAL = 1.0
PGLOADER = shutil.which("pgloader") or "/usr/bin/pgloader"
BASELINE = "pgloader"


def _run(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Run cmd under the RSS launcher; wall time and peak RSS are the launcher's measurements of cmd."""
    launcher = str(Path(__file__).with_name("rss_launcher.py"))  # a script: no package import in its RSS
    proc = subprocess.run([sys.executable, launcher, *cmd], capture_output=True, cwd=cwd, check=False)
    lines = proc.stderr.decode(errors="replace").splitlines()
    info = next((json.loads(x[9:]) for x in reversed(lines) if x.startswith("RSS_JSON ")), None)
    if info is None:
        return {
            "code": proc.returncode or 1,
            "wall_s": 0.0,
            "rss_mib": None,
            "stdout": proc.stdout,
            "stderr": proc.stderr,
        }
    return {
        "code": info["code"],
        "wall_s": info["wall_s"],
        "rss_mib": round(info["maxrss_kib"] / 1024, 1),  # ru_maxrss is in KiB on Linux
        "stdout": proc.stdout,
        "stderr": "\n".join(x for x in lines if not x.startswith("RSS_JSON ")).encode(),
    }


def make_source(env: BenchEnv, n_rows: int) -> tuple[Path, float]:
    md, table = bench_metadata()
    path = env.tmp / "history.db"
    eng = sqlite_engine(f"sqlite:///{path}")
    create_schema(eng, md, primary=True)
    t0 = time.perf_counter()
    seed(eng, [table], {table.name: n_rows}, batch=10_000)
    eng.dispose()
    return path, time.perf_counter() - t0


def _count(url: str, schema: str | None, table: str) -> int:
    eng = postgres_engine(url, schema or "public")
    with eng.connect() as conn:
        n = conn.execute(select(func.count()).select_from(text(table))).scalar() or 0
    eng.dispose()
    return int(n)


def run(env: BenchEnv, n_rows: int, log: Any = print) -> dict[str, Any]:
    md, table = bench_metadata()
    src, gen_s = make_source(env, n_rows)
    size_mib = round(src.stat().st_size / 2**20, 1)
    log(f"  copy: source {n_rows} rows, {size_mib} MiB, generated in {gen_s:.1f}s")
    results: list[dict[str, Any]] = []
    cwd = Path(__file__).resolve().parents[2]
    for method in ("copier", "copy", "executemany"):
        schema = env.new_schema(f"copy_{method}")
        eng = postgres_engine(env.postgres_url, schema)
        create_schema(eng, md, primary=False)
        eng.dispose()
        r = _run([sys.executable, "-m", "dualwrite.bench.copy_worker", method, str(src), env.postgres_url, schema], cwd)
        entry: dict[str, Any] = {"method": method, "wall_s": round(r["wall_s"], 3), "peak_rss_mib": r["rss_mib"]}
        if r["code"] != 0:
            entry["error"] = r["stderr"].decode(errors="replace").strip().splitlines()[-1:]
        else:
            inner = json.loads(r["stdout"].decode().strip().splitlines()[-1])
            entry["inner_s"] = round(inner["seconds"], 3)
        entry["rows"] = _count(env.postgres_url, schema, table.name)
        results.append(entry)
        log(f"  copy {method:12} {entry}")
    # `dualwrite migrate` as a user runs it: its own process, tables created by it, verified at the end
    schema = env.new_schema("copy_migrate")
    pg_url = env.postgres_url.replace("+psycopg2", "")
    r = _run(
        [sys.executable, "-m", "dualwrite", "migrate", "--sqlite", str(src), "--postgres", pg_url]
        + ["--pg-schema", schema, "--state-schema", f"{schema}_state"],  # its own (dropped when it is done)
        cwd,
    )
    entry = {"method": "migrate", "wall_s": round(r["wall_s"], 3), "peak_rss_mib": r["rss_mib"]}
    if r["code"] != 0:
        entry["error"] = (r["stderr"] or r["stdout"]).decode(errors="replace").strip().splitlines()[-3:]
    entry["rows"] = _count(env.postgres_url, schema, table.name) if r["code"] == 0 else 0
    results.append(entry)
    log(f"  copy migrate      {entry}")
    if Path(PGLOADER).exists():
        db = env.new_database("pgloader")
        load = env.tmp / "bench.load"
        load.write_text(
            f"LOAD DATABASE\n  FROM sqlite://{src}\n  INTO {env.database_url(db).replace('+psycopg2', '')}\n"
            "  WITH include drop, create tables, create indexes, reset sequences\n"
            f"  INCLUDING ONLY TABLE NAMES LIKE '{table.name}';\n"
        )
        r = _run([PGLOADER, "--no-ssl-cert-verification", str(load)], env.tmp)
        if r["code"] != 0:  # older pgloader builds lack that flag
            r = _run([PGLOADER, str(load)], env.tmp)
        entry = {"method": "pgloader", "wall_s": round(r["wall_s"], 3), "peak_rss_mib": r["rss_mib"]}
        if r["code"] != 0:
            entry["error"] = (r["stderr"] or r["stdout"]).decode(errors="replace").strip().splitlines()[-3:]
        try:
            entry["rows"] = _count(env.database_url(db), "public", table.name)
        except Exception as exc:  # noqa: BLE001
            entry["rows"] = 0
            entry.setdefault("error", [str(exc).splitlines()[0]])
        results.append(entry)
        log(f"  copy pgloader     {entry}")
    else:
        results.append({"method": "pgloader", "error": [f"{PGLOADER} not installed"], "rows": 0})
    for e in results:
        e["complete"] = e.get("rows") == n_rows and "error" not in e
        e["rows_per_s"] = round(e["rows"] / e["wall_s"], 1) if e.get("wall_s") and e["complete"] else None
    by = {e["method"]: e for e in results}
    base = by.get(BASELINE, {}).get("rows_per_s")
    for e in results:
        e["baseline"] = BASELINE
        e["ratio"] = ratio(e["rows_per_s"], base) if e["rows_per_s"] and base else None
    cop = by["copier"]
    goal = {
        "name": "backfill Copier throughput vs pgloader",
        "baseline": "pgloader rows/s",
        "baseline_rows_per_s": base,
        "value_rows_per_s": cop.get("rows_per_s"),
        "ratio": cop.get("ratio"),
        "goal_ratio": GOAL,
        "met": cop.get("ratio") is not None and cop["ratio"] >= GOAL,
        "higher_is_better": True,
    }
    return {
        "rows": n_rows,
        "source_mib": size_mib,
        "bytes_per_row": round(src.stat().st_size / max(1, n_rows)),
        "results": results,
        "goals": [goal],
        "rss_note": "peak RSS of each method's process: getrusage(RUSAGE_CHILDREN) in dualwrite/bench/rss_launcher.py",
    }
