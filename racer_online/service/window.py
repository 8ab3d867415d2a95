"""The leader's in-memory copy of a scope's calibration window, read incrementally."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from racer_online.store import WindowEntry

# Scores are fixed point in [0, 1], 16 bits, and the service decides on the quantised
# values (`quantise`), so the window recomputes exactly the entry levels of the decision.
# float16 would be too coarse where it matters: its step is 2^-11 in [0.5, 1), so every
# score above 0.99976 is 1 and 1 - s (the abstention score's factors) has no resolution
# left above 0.9995; a step of 1/65535 keeps 1 - s down to 1.5e-5.
SCORE_DTYPE = np.dtype("<u2")
SCORE_SCALE = 65_535


def quantise(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """The nearest score the window can hold; decisions are made on these."""
    return np.round(np.clip(values, 0.0, 1.0) * SCORE_SCALE) / SCORE_SCALE


def pack_scores(scores: NDArray[np.float64], p_abstain: NDArray[np.float64]) -> list[bytes]:
    """One blob per query: K model scores, then the abstention score, quantised."""
    rows = np.round(np.clip(np.column_stack([scores, p_abstain]), 0.0, 1.0) * SCORE_SCALE)
    return [row.tobytes() for row in rows.astype(SCORE_DTYPE)]


def unpack_scores(blob: bytes) -> NDArray[np.float64]:
    """The values `quantise` gives, exactly."""
    return np.frombuffer(blob, dtype=SCORE_DTYPE).astype(np.float64) / SCORE_SCALE


@dataclass
class WindowCache:
    """Most recent records first trimmed by size and age; arrays in entry order."""

    n_models: int
    last_id: str | None = None
    ids: list[str] = field(default_factory=list)
    entered_ms: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: NDArray[np.float64] = field(init=False)  # (n, K + 1): models, then ⊥
    labels: NDArray[np.bool_] = field(init=False)  # (n, K)
    # (n, K): a label the grader never gave ('?': an audit swept after its horizon).
    unknown: NDArray[np.bool_] = field(init=False)
    queries: list[str] = field(default_factory=list)
    lam: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # decision-time lam
    decided_at: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self._queries: set[str] = set()
        self.scores = np.zeros((0, self.n_models + 1))
        self.labels = np.zeros((0, self.n_models), dtype=bool)
        self.unknown = np.zeros((0, self.n_models), dtype=bool)

    def __len__(self) -> int:
        return len(self.lam)

    def append(self, entries: Sequence[WindowEntry]) -> None:
        """Append in entry order; a query already in the window (redelivered after its
        pending record expired, so decided and graded twice) is kept once."""
        if entries:
            self.last_id = entries[-1].id
        fresh = []
        for e in entries:
            if e.query and e.query in self._queries:
                continue
            fresh.append(e)
            if e.query:
                self._queries.add(e.query)
        entries = fresh
        if not entries:
            return
        scores = unpack_scores(b"".join(e.scores for e in entries))
        labels = np.frombuffer("".join(e.labels for e in entries).encode(), dtype=np.uint8)
        self.scores = np.vstack([self.scores, scores.reshape(len(entries), -1)])
        self.labels = np.vstack([self.labels, (labels == ord("1")).reshape(len(entries), -1)])
        self.unknown = np.vstack([self.unknown, (labels == ord("?")).reshape(len(entries), -1)])
        self.entered_ms = np.append(self.entered_ms, [e.entered_ms for e in entries])
        self.lam = np.append(self.lam, [e.lam for e in entries])
        self.decided_at = np.append(self.decided_at, [e.decided_at for e in entries])
        self.ids += [e.id for e in entries]
        self.queries += [e.query for e in entries]

    def trim(self, *, max_records: int, min_ms: int) -> int:
        """Keep the newest ``max_records`` not older than ``min_ms``; return how many left."""
        start = max(len(self) - max_records, int(np.searchsorted(self.entered_ms, min_ms)))
        self.keep_from(start)
        return max(start, 0)

    def prepend(self, entries: Sequence[WindowEntry]) -> None:
        """Records older than any read from the store (a warm start); the read position
        in the store's stream stays where it was."""
        last_id, ids, older = self.last_id, self.ids, WindowCache(self.n_models)
        older.append(entries)
        self.ids, self.queries = older.ids + ids, older.queries + self.queries
        self._queries |= older._queries
        self.entered_ms = np.append(older.entered_ms, self.entered_ms)
        self.scores = np.vstack([older.scores, self.scores])
        self.labels = np.vstack([older.labels, self.labels])
        self.unknown = np.vstack([older.unknown, self.unknown])
        self.lam = np.append(older.lam, self.lam)
        self.decided_at = np.append(older.decided_at, self.decided_at)
        self.last_id = last_id

    def keep_decided_from(self, at: float) -> None:
        """Keep the records of decisions made at or after ``at`` (a restarted window)."""
        keep = self.decided_at >= at
        self.ids = [i for i, k in zip(self.ids, keep.tolist(), strict=True) if k]
        self.queries = [q for q, k in zip(self.queries, keep.tolist(), strict=True) if k]
        self._queries = set(self.queries)
        self.entered_ms, self.scores = self.entered_ms[keep], self.scores[keep]
        self.labels, self.lam = self.labels[keep], self.lam[keep]
        self.unknown = self.unknown[keep]
        self.decided_at = self.decided_at[keep]

    def keep_from(self, start: int) -> None:
        if start <= 0:
            return
        del self.ids[:start]
        del self.queries[:start]
        self._queries = set(self.queries)
        self.entered_ms = self.entered_ms[start:]
        self.scores = self.scores[start:]
        self.labels = self.labels[start:]
        self.unknown = self.unknown[start:]
        self.lam = self.lam[start:]
        self.decided_at = self.decided_at[start:]
