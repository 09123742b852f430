"""What shadow comparisons leave in Redis: the counts per result (`{ns}:shadow:counts`, read by
dualwrite.redis_keys.read_shadow_counts) and the last mismatches, params masked, in the capped
stream `{ns}:shadow:mismatches`."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from dualwrite.redis_keys import shadow_counts_key, shadow_mismatches_key
from dualwrite.settings import mask_text
from dualwrite.shadow.experiment import Observation, Result

if TYPE_CHECKING:
    from dualwrite.engines import Backends

log = logging.getLogger("dualwrite.shadow.records")

MISMATCH_MAXLEN = 1000
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "authorization", "credential")


def mask_params(params: dict[str, Any] | None) -> str:
    """Params as JSON with secret-looking values and URL passwords masked."""
    if not params:
        return "{}"
    safe = {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) else v) for k, v in params.items()}
    return mask_text(json.dumps(safe, default=str, ensure_ascii=False, sort_keys=True))


def record_mismatch(
    backends: Backends, store: str, label: str, params: dict[str, Any] | None, result: Result, backend: str
) -> None:
    """Keep one mismatch (both sides' results and the differing rows, masked) in the capped stream."""

    def shown(obs: Observation | None) -> str:
        if obs is None:
            return ""
        if obs.exception is not None:
            text = f"{type(obs.exception).__name__}: {obs.exception}"
        else:
            text = json.dumps(obs.cleaned, default=repr, ensure_ascii=False, sort_keys=True)
        return mask_text(text[:8000])

    fields = {
        "store": store,
        "query": label,
        "candidate_backend": backend,
        "params": mask_params(params),
        "control": shown(result.control),
        "candidate": shown(result.candidate),
        "rows": mask_text("\n".join(result.rows)),
        "diff": mask_text(result.diff or ""),
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        backends.redis.xadd(
            shadow_mismatches_key(backends.settings.namespace), fields, maxlen=MISMATCH_MAXLEN, approximate=True
        )
    except redis.RedisError as exc:
        log.warning("could not record a shadow mismatch: %r", exc)


def add_counts(backends: Backends, counts: dict[str, int]) -> bool:
    """Add counts per result to the Redis hash the gate reads; False if Redis failed (the caller keeps them)."""
    try:
        pipe = backends.redis.pipeline(transaction=False)
        for field, n in counts.items():
            pipe.hincrby(shadow_counts_key(backends.settings.namespace), field, n)
        pipe.execute()
    except redis.RedisError:
        return False
    return True


def read_mismatches(client: redis.Redis, namespace: str, count: int = 20) -> list[dict[str, str]]:
    out = []
    for eid, fields in client.xrevrange(shadow_mismatches_key(namespace), count=count):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["id"] = eid.decode()
        out.append(row)
    return out
