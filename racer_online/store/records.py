"""The compact pending record: one hash field of a time slot's bucket per routed query.

The field is `query_hash` of the query id (8 bytes); the value packs what each later use
needs, little-endian (docs/operations.md has the arithmetic):

    flags      u8   audit, entered (in the window), counted (in the upper bound), status,
                    watched and low (the covariate channel's count at routing time)
    known      w B  bit j: model j of the catalogue is graded (w = ceil(K / 8), K <= 24)
    correct    w B  bit j: model j was graded correct
    invoked    w B  bit j: the decision invoked model j
    version    u32  the threshold version the decision used
    content    u32  a hash of the quantised scores: a reused id with other scores shows
    lam        f64  the threshold it used: exact, the window recomputes entry levels at it
    decided_at f64  the decision time, as published
    audit_rate f64  the rate the decision was drawn at, as published
    scores     (K + 1) x u16, audited records only: the quantised scores the decision used

With the query, the first four numbers rebuild the published decision byte for byte
(service/racer.py), so the decision JSON is never stored. The Lua scripts read and write
only the flags and the three masks; a window entry is the record's value as it was when
it entered, so the leader reads its labels ('?' where not graded), lam and scores from it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import NamedTuple

from racer_online.errors import ConfigError

AUDIT, ENTERED, COUNTED = 1, 2, 4  # flag bits
STATUS_SHIFT = 3  # bits 3-4: index in STATUSES
WATCHED, LOW_TOP = 32, 64  # the covariate channel: its threshold had a cut; top score below it
STATUSES = ("certified", "stale", "fallback")
MAX_MODELS = 24  # the masks stay below 2^24: exact in Lua's bit library (32-bit signed)
TAIL = struct.Struct("<IIddd")  # version, content, lam, decided_at, audit_rate


def mask_width(n_models: int) -> int:
    """Bytes per label mask; a scope of more than `MAX_MODELS` models is refused."""
    if not 0 < n_models <= MAX_MODELS:
        raise ConfigError(f"a scope holds 1 to {MAX_MODELS} models in the pending layout, "
                          f"not {n_models}")  # fmt: skip
    return (n_models + 7) // 8


def query_hash(query_id: str) -> bytes:
    """8 bytes of BLAKE2b of the query id: the record's field and its bucket. Two ids of one
    slot collide with probability about n^2 / 2^65 (3.5e-7 for 3.6 million ids)."""
    return hashlib.blake2b(query_id.encode(), digest_size=8, person=b"racer-pending").digest()


def to_mask(indices: object) -> int:
    """The bit mask of catalogue indices."""
    return sum(1 << i for i in set(indices))  # type: ignore[call-overload]


def from_mask(mask: int, n_models: int) -> tuple[int, ...]:
    return tuple(j for j in range(n_models) if mask >> j & 1)


class PendingRecord(NamedTuple):
    """A NamedTuple, not a frozen dataclass: two are built per routed query, and a tuple
    costs a third as much to build (benchmarks/hot_path_pieces.py)."""

    flags: int
    known: int
    correct: int
    invoked: int
    version: int
    content: int
    lam: float
    decided_at: float
    audit_rate: float
    scores: bytes  # empty unless audited

    @property
    def audit(self) -> bool:
        return bool(self.flags & AUDIT)

    @property
    def entered(self) -> bool:
        return bool(self.flags & ENTERED)

    @property
    def counted(self) -> bool:
        return bool(self.flags & COUNTED)

    @property
    def watched(self) -> bool:
        return bool(self.flags & WATCHED)

    @property
    def low_top(self) -> bool:
        return bool(self.flags & LOW_TOP)

    @property
    def status(self) -> str:
        return STATUSES[self.flags >> STATUS_SHIFT & 3]

    def labels(self, n_models: int) -> str:
        """'1'/'0' per catalogue model, '?' where it was never graded."""
        return "".join(
            "?" if not self.known >> j & 1 else "1" if self.correct >> j & 1 else "0"
            for j in range(n_models)
        )

    def pack(self, n_models: int) -> bytes:
        w = 8 * mask_width(n_models)  # bits per mask
        masks = self.known | self.correct << w | self.invoked << 2 * w  # little-endian, in order
        tail = TAIL.pack(self.version, self.content, self.lam, self.decided_at, self.audit_rate)
        return bytes([self.flags]) + masks.to_bytes(3 * w // 8, "little") + tail + self.scores

    @classmethod
    def unpack(cls, value: bytes, n_models: int) -> PendingRecord:
        w = mask_width(n_models)
        head = 1 + 3 * w
        masks, full = int.from_bytes(value[1:head], "little"), (1 << 8 * w) - 1
        known, correct, invoked = masks & full, masks >> 8 * w & full, masks >> 16 * w
        version, content, lam, decided_at, audit_rate = TAIL.unpack_from(value, head)
        scores = value[head + TAIL.size :]
        return cls(
            value[0], known, correct, invoked, version, content, lam, decided_at, audit_rate,
            scores,
        )  # fmt: skip


def content_hash(scores: bytes) -> int:
    """4 bytes of BLAKE2b of a query's packed quantised scores (window.pack_scores)."""
    return int.from_bytes(hashlib.blake2b(scores, digest_size=4).digest(), "little")


def status_flags(status: str) -> int:
    return STATUSES.index(status) << STATUS_SHIFT


def covariate_flags(cut: float | None, top_scores: Sequence[float]) -> list[int]:
    """Per decision: counted by the covariate channel (its threshold carries a cut), and
    whether its top score is below the cut. The route script adds them up per scope."""
    if cut is None:
        return [0] * len(top_scores)
    return [WATCHED | LOW_TOP * (top < cut) for top in top_scores]
