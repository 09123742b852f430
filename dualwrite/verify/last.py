"""The last `dualwrite verify` result, kept in Redis (`{ns}:verify:last`) for the cutover gate, and the
shadow window a clean verify opens."""

from __future__ import annotations

import json
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
) -> None:
    """Keep the last verify result for the gate. A run that fixed rows is not clean until re-verified.
    A clean one also opens a new shadow window (`shadow_counts`: the shadow reader's counts as they were
    when the verify began): the gate's mismatch rate counts only the comparisons after that."""
    doc = {
        "at": report.at,
        "clean": report.clean and not (fixed and any(t.fixed for t in report.tables)),
        "fixed": fixed,
        "mode": report.mode,
        "watermark": report.watermark,  # what an incremental verify re-verifies from (verify.incremental)
        "base": report.base or report.at,  # the full verify this result rests on
        "touched": report.touched,
        "tables": {
            t.table: {
                "clean": t.clean,
                "missing": len(t._keys.get("missing", [])),
                "extra": len(t._keys.get("extra", [])),
                "differing": len(t._keys.get("differing", [])),
                "error": t.error,
            }
            for t in report.tables
        },
    }
    client.set(verify_key(namespace), json.dumps(doc))
    if doc["clean"] and shadow_counts is not None:
        client.set(shadow_window_key(namespace), json.dumps({"since": report.at, "counts": shadow_counts}))


def load_last(client: Any, namespace: str) -> dict[str, Any] | None:
    raw = client.get(verify_key(namespace))
    return None if raw is None else json.loads(raw)
