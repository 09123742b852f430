"""The CLI's bad-input table (issue 16, items 4 and 6), the cases only: each bad input to a `dualwrite` command,
the exit code it must end with and the fragment its one line must name. test_cli_bad_input.py runs them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

META = ("--metadata", "tests.backfill.support:md")


@dataclass(frozen=True)
class Case:
    name: str  # what is wrong, as the report shows it
    args: tuple[Any, ...]  # CONN (the connection flags) or CONN_WITH(...) expand; {root} etc. are formatted
    code: int
    fragment: str  # expected in the one error line (or, exit 1, in the output)
    env: tuple[tuple[str, str], ...] = ()
    writes: bool = False  # a real run that found a problem (verify records its result): may change state
    locked: bool = False  # another process holds the SQLite file's write lock meanwhile


class ConnWith:
    def __init__(self, **override: str) -> None:
        self.override = override


CONN = ConnWith()
MISSING = "{root}/no-such-dir/app.db"
TYPO = "{root}/typo.db"


def C(  # noqa: N802
    name: str,
    args: list[Any],
    code: int,
    fragment: str,
    env: dict[str, str] | None = None,
    writes: bool = False,
    locked: bool = False,
) -> Case:
    return Case(name, tuple(args), code, fragment, tuple((env or {}).items()), writes, locked)


CASES = [
    # -- where the servers and files are ----------------------------------------------------------------
    C("--postgres with a bad port", ["init", CONN, "--postgres", "postgresql://u:s3cret@h:x/db"], 2, "--postgres"),
    C("--postgres not a postgres URL", ["verify", CONN, *META, "--postgres", "mysql://u:s3cret@h/db"], 2, "--postgres"),
    C(
        "Postgres not answering",
        ["verify", ConnWith(postgres="postgresql://u:s3cret@127.0.0.1:1/test"), *META],
        2,
        "127.0.0.1",
    ),
    C("--redis not a redis URL", ["backfill", "set", CONN, "--pause", "--redis", "http://x:1"], 2, "--redis"),
    C(
        "Redis not answering",
        ["backfill", "set", ConnWith(redis="redis://:s3cret@127.0.0.1:1/0"), "--pause"],
        2,
        "redis",
    ),
    C("--namespace with a space", ["backfill", "status", ConnWith(namespace="a b"), *META], 2, "--namespace"),
    C("--pg-schema not an identifier", ["verify", ConnWith(pg_schema="x;drop"), *META], 2, "--pg-schema"),
    C("--state-schema not an identifier", ["verify", ConnWith(state_schema="1 x"), *META], 2, "--state-schema"),
    C("--pool-size 0", ["verify", CONN, *META, "--pool-size", "0"], 2, "--pool-size"),
    C("--max-overflow -1", ["verify", CONN, *META, "--max-overflow", "-1"], 2, "--max-overflow"),
    C("DUALWRITE_POOL_SIZE=abc", ["verify", CONN, *META], 2, "DUALWRITE_POOL_SIZE", {"DUALWRITE_POOL_SIZE": "abc"}),
    C("--sqlite not a sqlite URL", ["status", ConnWith(sqlite="mysql://x/y")], 2, "--sqlite"),
    C("--sqlite in-memory", ["status", ConnWith(sqlite="sqlite://")], 2, "in-memory"),
    C("--sqlite path that does not exist (status)", ["status", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C(
        "--sqlite path that does not exist (backfill run)",
        ["backfill", "run", ConnWith(sqlite=TYPO), *META],
        2,
        "does not exist",
    ),
    C("--sqlite path that does not exist (verify)", ["verify", ConnWith(sqlite=TYPO), *META], 2, "does not exist"),
    C("--sqlite path that does not exist (migrate)", ["migrate", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C("--sqlite path that does not exist (phase)", ["phase", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C(
        "--sqlite path that does not exist (cutover flip)",
        ["cutover", "flip", ConnWith(sqlite=TYPO), *META],
        2,
        "does not exist",
    ),
    C("DUALWRITE_SQLITE_URL path that does not exist", ["status"], 2, "DUALWRITE_SQLITE_URL", {"SQLITE": TYPO}),
    C("init into a folder that does not exist", ["init", ConnWith(sqlite=MISSING)], 2, "does not exist"),
    C("a file that is not SQLite (init)", ["init", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a file that is not SQLite (migrate)", ["migrate", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a file that is not SQLite (status)", ["status", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a folder as --sqlite", ["status", ConnWith(sqlite="{root}")], 2, "is not a file"),
    C("--sqlite given twice (migrate)", ["migrate", CONN, "--sqlite", "{sqlite}"], 2, "given 2 times"),
    C("--sqlite given twice (backfill run)", ["backfill", "run", CONN, *META, "--sqlite", "{sqlite}"], 2, "2 times"),
    C("a SQLite file that cannot be read (flip)", ["cutover", "flip", ConnWith(sqlite="{broken}"), *META], 2, "sqlite"),
    # -- which tables ----------------------------------------------------------------------------------
    C("--metadata not module:attr", ["verify", CONN, "--metadata", "not a spec"], 2, "module:attribute"),
    C("--metadata module missing", ["verify", CONN, "--metadata", "no_such_mod_q:md"], 2, "cannot import"),
    C("--metadata not a MetaData", ["verify", CONN, "--metadata", "os:sep"], 2, "is not a Tables, MetaData"),
    C("--metadata and --reflect", ["verify", CONN, *META, "--reflect"], 2, "give one of them"),
    C("no tables given", ["verify", CONN], 2, "which tables?"),
    C("unknown table (verify)", ["verify", CONN, *META, "--tables", "nope"], 2, "'nope'"),
    C("unknown table (backfill run)", ["backfill", "run", CONN, *META, "--table", "nope"], 2, "'nope'"),
    C("unknown table (backfill reset)", ["backfill", "reset", CONN, "--tables", "nope", "--yes"], 2, "'nope'"),
    C(
        "backfill reset before any backfill",
        ["backfill", "reset", CONN, "--tables", "bf_notes", "--yes"],
        2,
        "no backfill progress",
    ),
    C("unknown table (migrate)", ["migrate", CONN, "--tables", "nope"], 2, "nope"),
    C("unknown priority", ["backfill", "run", CONN, *META, "--priority", "high"], 2, "--priority"),
    C("unknown store", ["backfill", "run", CONN, *META, "--stores", "nope"], 2, "store 'nope'"),
    C("init --metadata without --create-tables", ["init", CONN, *META], 2, "--create-tables"),
    # -- numbers -----------------------------------------------------------------------------------------
    C("rate nan", ["backfill", "run", CONN, *META, "--max-rows-per-second", "nan"], 2, "not a finite number"),
    C("rate inf", ["backfill", "run", CONN, *META, "--max-rows-per-second", "inf"], 2, "not a finite number"),
    C("rate negative", ["backfill", "run", CONN, *META, "--max-rows-per-second", "-5"], 2, "--max-rows-per-second"),
    C("rate huge", ["backfill", "run", CONN, *META, "--max-rows-per-second", "1e12"], 2, "not in the range"),
    C("rate not a number", ["backfill", "run", CONN, *META, "--max-rows-per-second", "fast"], 2, "is not a number"),
    C("latency nan", ["backfill", "run", CONN, *META, "--max-pg-latency-ms", "nan"], 2, "--max-pg-latency-ms"),
    C("lag negative", ["backfill", "run", CONN, *META, "--max-replication-lag-s", "-1"], 2, "--max-replication-lag"),
    C("chunk size 0", ["backfill", "run", CONN, *META, "--chunk-size", "0"], 2, "--chunk-size"),
    C("lease ttl 0", ["backfill", "run", CONN, *META, "--lease-ttl", "0"], 2, "--lease-ttl"),
    C("max rejects -1", ["backfill", "run", CONN, *META, "--max-rejects", "-1"], 2, "--max-rejects"),
    C("live rate nan", ["backfill", "set", CONN, "--max-rows-per-second", "nan"], 2, "not a finite number"),
    C("live latency inf", ["backfill", "set", CONN, "--max-pg-latency-ms", "inf"], 2, "not a finite number"),
    C("live chunk size -1", ["backfill", "set", CONN, "--chunk-size", "-1"], 2, "--chunk-size"),
    C("gate mismatch rate nan", ["cutover", "check", CONN, *META, "--max-mismatch-rate", "nan"], 2, "finite"),
    C(
        "gate mismatch rate above 1",
        ["cutover", "flip", CONN, *META, "--max-mismatch-rate", "2"],
        2,
        "between 0 and 1",
    ),
    C("gate mismatch rate negative", ["status", CONN, "--max-mismatch-rate", "-0.1"], 2, "--max-mismatch-rate"),
    C("gate min comparisons -1", ["cutover", "check", CONN, *META, "--min-comparisons", "-1"], 2, "--min-comparisons"),
    C("gate replay lag huge", ["cutover", "check", CONN, *META, "--max-replay-lag", "1e99"], 2, "--max-replay-lag"),
    C("gate verify age inf", ["cutover", "check", CONN, *META, "--verify-max-age", "inf"], 2, "finite"),
    C("flip --deadline nan", ["cutover", "flip", CONN, *META, "--postpone", "--deadline", "nan"], 2, "--deadline"),
    C("flip --poll 0", ["cutover", "flip", CONN, *META, "--postpone", "--poll", "0"], 2, "--poll"),
    C("deadletters list --count -1", ["backfill", "deadletters", "list", CONN, "--count", "-1"], 2, "--count"),
    C("deadletters list --count abc", ["backfill", "deadletters", "list", CONN, "--count", "abc"], 2, "--count"),
    C("verify --segment-rows 0", ["verify", CONN, *META, "--segment-rows", "0"], 2, "--segment-rows"),
    C("verify --recheck-delay nan", ["verify", CONN, *META, "--recheck-delay", "nan"], 2, "not a finite number"),
    C("shadow report --limit -1", ["shadow", "report", CONN, "--limit", "-1"], 2, "--limit"),
    C("migrate --chunk-size 0", ["migrate", CONN, "--chunk-size", "0"], 2, "--chunk-size"),
    C("bench --copy-rows 0", ["bench", "--copy-rows", "0"], 2, "--copy-rows"),
    C("--metrics-port 70000", ["backfill", "run", CONN, *META, "--metrics-port", "70000"], 2, "--metrics-port"),
    C(
        "--metrics-host not on this machine",
        ["backfill", "run", CONN, *META, "--metrics-host", "203.0.113.7", "--metrics-port", "{dead_port}"],
        2,
        "cannot listen on 203.0.113.7",
    ),
    C("--metrics-port in use", ["backfill", "run", CONN, *META, "--metrics-port", "{busy_port}"], 2, "{busy_port}"),
    # -- options of one command ------------------------------------------------------------------------------
    C("migrate --on-error bogus", ["migrate", CONN, "--on-error", "bogus"], 2, "--on-error"),
    C("migrate --cast without =", ["migrate", CONN, "--cast", "x"], 2, "--cast"),
    C("migrate --cast to an unknown type", ["migrate", CONN, "--cast", "bf_notes.body=blobby"], 2, "blobby"),
    C("migrate --rename without =", ["migrate", CONN, "--rename", "x"], 2, "--rename"),
    C("bench --sections bogus", ["bench", "--sections", "bogus"], 2, "bogus"),
    C("unknown command", ["nosuchcommand"], 2, "nosuchcommand"),
    C("unknown option", ["status", CONN, "--bogus"], 2, "--bogus"),
    C("phase to an unknown phase", ["phase", CONN, "bogus"], 2, "bogus"),
    C(
        "redrive a dead letter that does not exist",
        ["backfill", "deadletters", "redrive", CONN, *META, "1-1"],
        2,
        "1-1",
    ),
    C("redrive a malformed id", ["backfill", "deadletters", "redrive", CONN, *META, "abc"], 2, "abc"),
    # -- where the report goes (refused before the work, not after it) ------------------------------------------
    C(
        "--report into a missing folder (backfill run)",
        ["backfill", "run", CONN, *META, "--report", MISSING],
        2,
        "does not exist",
    ),
    C(
        "--report into a missing folder (status)",
        ["backfill", "status", CONN, *META, "--report", MISSING],
        2,
        "--report",
    ),
    C("--report is a folder (verify)", ["verify", CONN, *META, "--report", "{root}"], 2, "is a directory"),
    C("--report into a missing folder (migrate)", ["migrate", CONN, "--report", MISSING], 2, "does not exist"),
    C(
        "--report into a missing folder (cutover check)",
        ["cutover", "check", CONN, *META, "--report", MISSING],
        2,
        "--report",
    ),
    C("--report into a missing folder (doctor)", ["doctor", CONN, "--report", MISSING], 2, "does not exist"),
    C("--rejects into a missing folder", ["backfill", "run", CONN, *META, "--rejects", MISSING], 2, "--rejects"),
    # -- wrong results fixed at their cause ---------------------------------------------------------------
    C(
        "doctor with a Postgres role that cannot set session_replication_role",
        ["doctor", ConnWith(postgres="{weak_url}")],
        1,
        "session_replication_role",
    ),
    C(
        "verify finds differences (a summary line)",
        ["verify", CONN, *META],
        1,
        "verify: 3 of 3 table(s) differ (15 missing",
        writes=True,
    ),
    C("doctor with a file that is not SQLite", ["doctor", ConnWith(sqlite="{text}")], 1, "is not a database"),
    C(
        "status while Redis is down",
        ["status", ConnWith(redis="redis://127.0.0.1:{dead_port}/0")],
        1,
        "redis copy: unreachable",
    ),
    C(
        "a locked SQLite file (phase change)",
        ["phase", CONN, "sqlite", "--force"],
        1,
        "sqlite ({sqlite}): database is locked",
        locked=True,
    ),
    C("a locked SQLite file (init)", ["init", CONN], 2, "sqlite {sqlite}: database is locked", locked=True),
]
