"""The last `dualwrite verify` result, kept in Redis (`{ns}:verify:last`) for the cutover gate, and the
shadow window a clean verify opens."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from dualwrite.redis_keys import shadow_window_key, verify_key

if TYPE_CHECKING:
    from dualwrite.verify.verifier import VerifyReport


def load_shadow_window(client: Any, namespace: str) -> dict[str, Any] | None:
    """{"since": the clean verify's time, "counts": the shadow counts when it began}, or None."""
    raw = client.get(shadow_window_key(namespace))
    return None if raw is None else json.loads(raw)


def store_last(
    client: Any,
    namespace: str,
    report: VerifyReport,
    *,
    fixed: bool = False,
    shadow_counts: dict[str, int] | None = None,
    captured: Collection[str] | None = None,
) -> None:
    """Keep the last verify result for the gate, per table. A verify of some tables (`--tables`, as the next
    steps have an operator re-verify the tables just fixed) replaces their results and keeps the other
    tables' from the verifies before, each with its time and watermark: so the gate sees every table's
    last result, and the record's watermark (what an incremental verify re-reads from) is the oldest one.
    `captured`: the application's table names; a kept result of any other table is dropped.
    A run that fixed rows is not clean until re-verified. A clean one also opens a new shadow window
    (`shadow_counts`: the shadow reader's counts as they were when the verify began): the gate's
    mismatch rate counts only the comparisons after that."""
    base = report.base or report.at  # the full verify this result rests on
    ran = {
        t.table: {
            "clean": t.clean,
            "missing": len(t._keys.get("missing", [])),
            "extra": len(t._keys.get("extra", [])),
            "differing": len(t._keys.get("differing", [])),
            "error": t.error,
            "at": report.at,
            "watermark": report.watermark,
            "base": base,
        }
        for t in report.tables
    }
    key, window_key = verify_key(namespace), shadow_window_key(namespace)

    def update(pipe: Any) -> None:  # WATCHed: another verify storing meanwhile makes this run again
        raw = pipe.get(key)
        before = json.loads(raw) if raw else {}
        kept = {
            name: {"at": before.get("at"), "watermark": before.get("watermark"), "base": before.get("base"), **entry}
            for name, entry in before.get("tables", {}).items()
            if captured is None or name in captured
        }
        # a verify that began earlier but stores later does not replace a newer result of the same table
        tables = {**kept, **{n: e for n, e in ran.items() if n not in kept or (kept[n]["at"] or "") <= e["at"]}}
        marks = [t["watermark"] for t in tables.values()]
        doc = {
            "at": max(report.at, before.get("at") or ""),
            "clean": all(t["clean"] for t in tables.values())
            and not (fixed and any(t.fixed for t in report.tables)),
            "fixed": fixed,
            "mode": report.mode,
            "watermark": None if None in marks else min(marks, default=report.watermark),
            "base": min((t["base"] for t in tables.values() if t["base"]), default=base),
            "touched": report.touched,
            "tables": tables,
        }
        window = pipe.get(window_key)
        newer_window = window is not None and json.loads(window).get("since", "") > report.at
        pipe.multi()
        pipe.set(key, json.dumps(doc))
        if doc["clean"] and shadow_counts is not None and not newer_window:
            pipe.set(window_key, json.dumps({"since": report.at, "counts": shadow_counts}))

    client.transaction(update, key, window_key)


def verify_verdict(last: dict[str, Any], wanted: list[str]) -> tuple[str, list[str], list[str]]:
    """From the last-verify record, for the tables `wanted` (all it holds if none): the oldest of their
    results' times, the tables whose last result differed, and those never verified."""
    results = last.get("tables", {})
    wanted = wanted or list(results)
    never = [t for t in wanted if t not in results]
    bad = sorted(t for t in wanted if t in results and not results[t].get("clean"))
    at = min((results[t].get("at") or last["at"] for t in wanted if t in results), default=last["at"])
    return at, bad, never


def load_last(client: Any, namespace: str) -> dict[str, Any] | None:
    raw = client.get(verify_key(namespace))
    return None if raw is None else json.loads(raw)
