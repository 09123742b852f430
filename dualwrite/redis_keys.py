"""Every Redis key dualwrite writes, all under the settings' namespace: one place, so that an operator (or
`backfill reset`) can see what is ours, and so that two roles reading one key (the shadow reader writes
its counts, verify and the gate read them) name it once. The names are part of the operator's interface:
dashboards, runbooks and `redis-cli` sessions use them, so they do not change.
One two-line function per key: a list, alike line for line by design; and the one reader of a key that
several roles read (the shadow counts: the shadow reader fills them, verify snapshots them, the gate and
the CLI report them)."""

from __future__ import annotations

from typing import Any


# One function per key, the same shape on purpose: every Redis name operators see is spelled here once.
# The change stream (relay -> replayers) and its dead letters.
def stream_key(namespace: str) -> str:
    return f"{namespace}:changes"


def dead_letter_key(namespace: str) -> str:
    return f"{namespace}:changes:dead"


# The cutover phase, its epoch (bumped by every move) and its history.
def phase_key(namespace: str) -> str:
    return f"{namespace}:phase"


def phase_epoch_key(namespace: str) -> str:
    return f"{namespace}:phase:epoch"


def phase_history_key(namespace: str) -> str:
    return f"{namespace}:phase:history"


# The write fence: the raised fence, its pub/sub channel, the live members, the epoch counter and, per
# epoch, the members' acknowledgements and release reports.
def fence_key(namespace: str) -> str:
    return f"{namespace}:fence"


def fence_channel(namespace: str) -> str:
    return f"{namespace}:fence:events"


def fence_instances_key(namespace: str) -> str:
    return f"{namespace}:fence:instances"


def fence_epoch_key(namespace: str) -> str:
    return f"{namespace}:fence:epoch"


def fence_acks_key(namespace: str, epoch: int) -> str:
    return f"{namespace}:fence:acks:{epoch}"


def fence_reports_key(namespace: str, epoch: int) -> str:
    return f"{namespace}:fence:reports:{epoch}"


# Shadow reads: comparison counts (a hash), recent mismatches, and the window a clean verify opens.
def shadow_counts_key(namespace: str) -> str:
    return f"{namespace}:shadow:counts"


def read_shadow_counts(client: Any, namespace: str) -> dict[str, int]:
    """The comparison counts per result ({"match": n, "mismatch": m, "skipped": s, ...}); `client` may
    decode replies or not."""
    return {
        (k.decode() if isinstance(k, bytes) else k): int(v)
        for k, v in client.hgetall(shadow_counts_key(namespace)).items()
    }


def shadow_mismatches_key(namespace: str) -> str:
    return f"{namespace}:shadow:mismatches"


def shadow_window_key(namespace: str) -> str:
    return f"{namespace}:shadow:window"


# The last verify result, read by the cutover gate.
def verify_key(namespace: str) -> str:
    return f"{namespace}:verify:last"


# The backfill's runtime control (pause, rate) and each worker's status.
def backfill_control_key(namespace: str) -> str:
    return f"{namespace}:backfill:control"


def backfill_worker_key(namespace: str, name: str) -> str:
    return f"{namespace}:backfill:worker:{name}"


# A postponed flip's cancel flag and its armed record.
def cutover_cancel_key(namespace: str) -> str:
    return f"{namespace}:cutover:cancel"


def cutover_armed_key(namespace: str) -> str:
    return f"{namespace}:cutover:armed"
