"""Between the store's messages (base.py) and the packed pending record (records.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from racer_online.store import keys
from racer_online.store.base import LabelWrite, PendingWrite, WindowEntry
from racer_online.store.records import (
    AUDIT,
    PendingRecord,
    content_hash,
    query_hash,
    status_flags,
    to_mask,
)


def new_record(w: PendingWrite, n_models: int) -> bytes:
    """The packed record of a fresh decision: no label yet; scores for audits only."""
    flags = AUDIT * w.audit | status_flags(w.status) | w.covariate
    record = PendingRecord(
        flags, 0, 0, to_mask(w.invoked), w.version, content_hash(w.scores), w.lam,
        w.decided_at, w.audit_rate, w.scores if w.audit else b"",
    )  # fmt: skip
    return record.pack(n_models)


def label_masks(w: LabelWrite, models: Sequence[str]) -> tuple[int, int]:
    """The known and correct masks of a feedback event (its models are in the catalogue)."""
    index = {m: j for j, m in enumerate(models)}
    known = to_mask(index[m] for m in w.labels)
    return known, to_mask(index[m] for m, y in w.labels.items() if int(y))


def window_entry(entry_id: str, value: bytes, query: bytes, n_models: int) -> WindowEntry:
    record = PendingRecord.unpack(value, n_models)
    return WindowEntry(
        entry_id, record.scores, record.labels(n_models), record.lam, record.decided_at,
        query.hex(),
    )  # fmt: skip


def candidate_keys(
    scope: str, query_id: str, slots: Mapping[bytes, bytes]
) -> tuple[bytes, list[str]]:
    """A query's field and the keys its record may be in, newest slot first, from the
    slots hash (``HGETALL``). For tests and tools: the scripts search the same way."""
    hash_ = query_hash(query_id)
    index = int.from_bytes(hash_[:4], "little")
    buckets = {int(k[2:]): int(v) for k, v in slots.items() if k.startswith(b"b:")}
    return hash_, [keys.pending(scope, s, index % b) for s, b in sorted(buckets.items())[::-1]]
