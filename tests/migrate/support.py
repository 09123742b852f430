"""Helpers: build SQLite files with sqlite3, run `migrate` in-process, read Postgres back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from dualwrite.cli.migrate import command
from tests.conftest import PG_ADMIN_URL, state_schema_for


def make_db(path: str | Path, script: str, rows: dict[str, list[tuple[Any, ...]]] | None = None) -> str:
    con = sqlite3.connect(str(path))
    con.executescript(script)
    for table, values in (rows or {}).items():
        if values:
            marks = ", ".join("?" * len(values[0]))
            con.executemany(f'INSERT INTO "{table}" VALUES ({marks})', values)
    con.commit()
    con.close()
    return str(path)


def migrate(sqlite_path: str, schema: str, *args: str, tmp: Path | None = None) -> tuple[Result, dict[str, Any]]:
    report = (tmp or Path(sqlite_path).parent) / f"report-{schema}.json"
    rejects = (tmp or Path(sqlite_path).parent) / f"rejects-{schema}"
    argv = ["--sqlite", sqlite_path, "--postgres", PG_ADMIN_URL, "--pg-schema", schema]
    if "--state-schema" not in args:  # the test's own, never the shared default (_dualwrite)
        argv += ["--state-schema", state_schema_for(schema)]
    argv += ["--report", str(report), "--rejects", str(rejects), *args]
    result = CliRunner().invoke(command, argv, catch_exceptions=False)
    data = json.loads(report.read_text()) if report.exists() else {}
    if report.exists():
        report.unlink()
    return result, data


def rejects(sqlite_path: str, schema: str) -> list[dict[str, Any]]:
    path = Path(sqlite_path).parent / f"rejects-{schema}" / "rejects.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pg(schema: str):  # type: ignore[no-untyped-def]
    return create_engine(PG_ADMIN_URL, connect_args={"options": f"-csearch_path={schema}"})


def fetch(schema: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = pg(schema)
    try:
        with engine.begin() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def column_types(schema: str, table: str) -> dict[str, str]:
    rows = fetch(
        schema,
        "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = :s AND table_name = :t",
        s=schema,
        t=table,
    )
    out = {}
    for name, dtype, length, prec, scale in rows:
        if dtype == "character varying":
            dtype = f"varchar({length})"
        elif dtype == "numeric" and prec is not None:
            dtype = f"numeric({prec},{scale})"
        out[name] = dtype
    return out


def drop_schema(schema: str) -> None:
    """The schema and the state schema migrate() gave it."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for name in (schema, state_schema_for(schema)):
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    engine.dispose()
