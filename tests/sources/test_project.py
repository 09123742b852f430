"""The project file: its sources, their derived names, the precedence flags > env > file > defaults, the
selection (one, a priority, all in priority order), and one clear line naming the file and line."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from dualwrite.errors import ConfigError
from dualwrite.settings import load_settings, load_sources
from tests.userapp.fleet import ROOT
from tests.userapp.operator import dualwrite

TOML = """\
[dualwrite]
postgres = "postgresql://app:s3cret@127.0.0.1:5432/test"
namespace = "shop"

[sources.archive]
sqlite = "stores/archive.db"
reflect = true
priority = "P2"

[sources.memory]
sqlite = "stores/memory.db"
models = "tests.userapp.writer:tables"
priority = "P0"
pg_schema = "public"

[sources.graph]
sqlite = "stores/graph.db"
models = "tests.userapp.writer:tables"
priority = "P1"
namespace = "kg"
state_schema = "_kg"
"""


def _file(tmp_path: Path, text: str = TOML) -> str:
    path = tmp_path / "dualwrite.toml"
    path.write_text(text)
    return str(path)


def test_sources_in_priority_order_with_derived_names(tmp_path: Path) -> None:
    runs = load_sources(env={}, config=_file(tmp_path))
    assert [(s.source, s.priority) for s in runs] == [("memory", 0), ("graph", 1), ("archive", 2)]
    memory, graph, archive = runs
    assert memory.sqlite_path == tmp_path / "stores/memory.db"  # relative to the project file's folder
    assert (memory.pg_schema, memory.namespace, memory.state_schema) == ("public", "shop:memory", "_dualwrite_memory")
    assert (graph.pg_schema, graph.namespace, graph.state_schema) == ("graph", "kg", "_kg")
    assert archive.reflect and archive.metadata is None and memory.metadata == "tests.userapp.writer:tables"
    assert all(s.postgres_url.endswith("@127.0.0.1:5432/test") for s in runs)
    assert "s3cret" not in repr(memory) and "source='memory'" in repr(memory)
    assert memory.origins["sqlite_url"].endswith("line 11: [sources.memory] sqlite")


def test_flags_over_environment_over_the_file(tmp_path: Path) -> None:
    config = _file(tmp_path)
    env_ = {"DUALWRITE_NAMESPACE": "fromenv", "DUALWRITE_PG_SCHEMA": "envschema"}
    (memory,) = load_sources(env=env_, config=config, source="memory")
    assert (memory.namespace, memory.pg_schema) == ("fromenv:memory", "envschema")  # the base, then the override
    s = load_settings(
        env=env_, config=config, source="memory", pg_schema="flagschema", sqlite_url=str(tmp_path / "x.db")
    )
    assert (s.pg_schema, s.sqlite_path) == ("flagschema", tmp_path / "x.db")
    assert s.origins["pg_schema"] == "--pg-schema" and s.origins["namespace"].startswith("DUALWRITE_NAMESPACE")
    # one store's setting from a flag or the environment cannot apply to several sources
    with pytest.raises(ConfigError, match=r"DUALWRITE_PG_SCHEMA: 3 sources are selected .* --source NAME"):
        load_sources(env=env_, config=config)
    with pytest.raises(ConfigError, match=r"--sqlite: 2 sources are selected \(graph, archive\)"):
        load_sources(env={}, config=config, priorities=[1, 2], sqlite_url="x.db")
    # the project file is found in the working directory, or named by DUALWRITE_CONFIG
    assert [s.source for s in load_sources(env={"DUALWRITE_CONFIG": config}, priorities=[2])] == ["archive"]
    without = load_sources(env={})  # no file here (the tests run in the checkout): one plain Settings
    assert len(without) == 1 and without[0].source is None


@pytest.mark.parametrize(
    ("text", "kwargs", "needle"),
    [
        (TOML, {"source": "nope"}, "--source: no source 'nope' in {path} (sources: memory, graph, archive)"),
        (TOML, {"priorities": [7]}, "--priority P7: no source of {path} has it"),
        (TOML, {"source": "memory", "priorities": [2]}, "--source memory is P0, not P2"),
        (TOML.replace('priority = "P2"', 'priority = "urgent"'), {}, "{path} line 8: [sources.archive] priority"),
        (TOML.replace("reflect = true", "relfect = true"), {}, "{path} line 7: [sources.archive] relfect: unknown"),
        (TOML.replace('namespace = "shop"', 'namespace = "shop'), {}, "{path}: not valid TOML: "),
        (TOML.replace('namespace = "kg"', 'namespace = "k g"'), {}, "{path} line 20: [sources.graph] namespace"),
        (TOML.replace('sqlite = "stores/graph.db"\n', ""), {}, "{path} line 16: [sources.graph]: needs sqlite"),
        (TOML + "\n[source.x]\nsqlite = 'a'\n", {}, "{path} line 23: unknown table [source]"),
    ],
)
def test_a_bad_file_or_selection_is_one_line_naming_it(tmp_path: Path, text: str, kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    config = _file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sources(env={}, config=config, **kwargs)
    message = str(err.value)
    assert needle.format(path=config) in message and "\n" not in message, message
    assert "s3cret" not in message


def test_the_cli_says_what_it_works_on_and_refuses_an_unknown_source(tmp_path: Path, redis_prefix: str) -> None:
    text = TOML.replace('namespace = "shop"', f'namespace = "{redis_prefix}"')
    config = _file(tmp_path, text.replace('namespace = "kg"', f'namespace = "{redis_prefix}:kg"'))

    cli = functools.partial(dualwrite, timeout=60)  # the operator's CLI as its own process, a minute at most

    out = cli("cutover", "cancel", "--config", config, "--redis", "redis://127.0.0.1:6379/0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "dualwrite: all 3 source(s) in priority order: memory (P0), graph (P1), archive (P2)", lines
    assert [x for x in lines if x.startswith("== source")] == [
        "== source memory (P0) ==",
        "== source graph (P1) ==",
        "== source archive (P2) ==",
    ]
    out = cli("cutover", "cancel", "--config", config, "--priority", "P1,P2")
    assert out.stdout.startswith("dualwrite: priority P1,P2: 2 source(s) in priority order: graph (P1), archive (P2)")
    bad = cli("cutover", "cancel", "--config", config, "--source", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no source 'nope'" in bad.stderr, bad
    out = cli("status", "--config", config)  # no store file exists yet: each source's row says so
    assert out.returncode == 1, out
    rows = [line.split() for line in out.stdout.splitlines() if "unavailable" in line]  # plain lines: no terminal
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("memory", "P0", "unknown"),
        ("graph", "P1", "unknown"),
        ("archive", "P2", "unknown"),
    ], out.stdout
    bad = cli("backfill", "run", "--config", config, "--daemon")  # it would never get past the first source
    assert bad.returncode == 2 and "--daemon serves one source, 3 are selected" in bad.stderr, bad
    bad = cli("cutover", "cancel", "--priority", "P0")  # no project file
    assert bad.returncode == 2 and "--priority selects sources of a project file" in bad.stderr, bad


def test_the_readme_example_is_a_valid_project_file(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Several SQLite files") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", section.index("```toml\n") + 8)]
    runs = load_sources(env={}, config=_file(tmp_path, example))
    assert [(s.source, s.priority, s.pg_schema, s.namespace) for s in runs] == [
        ("memory", 0, "memory", "myapp:memory"),
        ("archive", 2, "archive", "myapp:archive"),
    ]
    assert runs[1].reflect and runs[0].metadata == "myapp.memory:Base"


def test_the_working_directory_file_is_found_only_from_the_real_environment(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _file(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("DUALWRITE_")]:  # the real environment, minus ours
        monkeypatch.delenv(name)
    assert [s.source for s in load_sources()] == ["memory", "graph", "archive"]  # ./dualwrite.toml
    isolated = load_sources(env={})  # a caller's own environment (the bench, tests): nothing ambient
    assert len(isolated) == 1 and isolated[0].source is None and isolated[0].namespace == "dualwrite"
