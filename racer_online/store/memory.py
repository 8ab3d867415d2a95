"""The in-memory twin of the Redis store: same semantics, for service tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from racer_online.errors import FencedError, StoreUnavailableError
from racer_online.store import keys
from racer_online.store.base import (
    FeedbackOutcome,
    LabelWrite,
    Lease,
    PendingWrite,
    RouteResult,
    StoreConfig,
    StreamId,
    SweepResult,
    WindowEntry,
)


@dataclass
class _Pending:
    expires: float
    decision: bytes | None = None
    scores: bytes = b""
    lam: float = 1.0
    audit: bool = False
    entered: bool = False
    invoked: tuple[int, ...] = ()
    decided_at: float = 0.0
    counted: bool = False  # in the upper-bound counters
    labels: dict[str, int] = field(default_factory=dict)


class MemoryStore:
    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.up = True  # tests set it to False to act as an unreachable Redis
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._windows: dict[str, list[WindowEntry]] = {}
        self._thresholds: dict[str, tuple[int, bytes]] = {}
        self._history: dict[str, list[bytes]] = {}
        self._alerts: dict[str, list[bytes]] = {}
        self._upper: dict[str, tuple[int, int]] = {}
        self._monitor: dict[str, dict[str, str]] = {}
        self._audits: dict[str, dict[str, float]] = {}  # scope -> query id -> horizon end
        self._expired: dict[str, tuple[int, int]] = {}  # scope -> (expired, lost) audits
        self._last_id = (0, 0)
        self._leases: dict[str, tuple[Lease, float]] = {}  # scope -> live lease, its expiry
        self._epochs: dict[str, int] = {}  # scope -> lease epoch, the fencing token

    def _fence(self, scope: str, epoch: int) -> None:
        """See fence.lua."""
        current = self._epochs.get(scope)
        if current != epoch:
            raise FencedError(f"FENCED lease epoch {epoch} of the scope is superseded by "
                              f"{current or 'none'}")  # fmt: skip

    def _check(self) -> None:
        if not self.up:
            raise StoreUnavailableError("memory store is down")

    def _live(self, scope: str, query_id: str) -> _Pending | None:
        record = self._pending.get((scope, query_id))
        if record is not None and record.expires <= self.clock():
            del self._pending[(scope, query_id)]
            return None
        return record

    def _next_id(self) -> str:
        ms = int(self.clock() * 1000)
        self._last_id = (ms, self._last_id[1] + 1) if ms <= self._last_id[0] else (ms, 0)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    def _enter(self, scope: str, record: _Pending, query: str, *, worst_case: bool = False) -> bool:
        """``worst_case``: the sweep enters it with its missing labels as '?'."""
        models = self.config.catalogues[scope]
        if record.decision is None or not record.audit or record.entered:
            return False
        if not worst_case and any(m not in record.labels for m in models):
            return False
        labels = "".join(str(record.labels.get(m, "?")) for m in models)
        window = self._windows.setdefault(scope, [])
        entry = WindowEntry(
            self._next_id(), record.scores, labels, record.lam, record.decided_at, query
        )
        window.append(entry)
        del window[: max(0, len(window) - self.config.window_size)]
        record.entered = True
        # Complete: the sweep no longer needs it, so it gives back its grace period.
        record.expires = min(record.expires, self.clock() + self.config.pending_ttl_s)
        return True

    def _count_invoked(self, scope: str, record: _Pending) -> None:
        """Upper-bound counters of non-audit decisions (see common.lua)."""
        models = self.config.catalogues[scope]
        graded = [record.labels.get(models[i]) for i in record.invoked]
        if record.decision is None or record.audit or record.counted or None in graded:
            return
        record.counted = True
        n, misses = self._upper.get(scope, (0, 0))
        self._upper[scope] = (n + 1, misses + int(1 not in graded))

    async def route(self, writes: Sequence[PendingWrite]) -> list[RouteResult]:
        self._check()
        results = []
        for w in writes:
            record = self._live(w.scope, w.query_id)
            if record is not None and record.decision is not None:
                results.append(RouteResult(record.decision, False, False))
                continue
            if record is None:
                record = self._pending[(w.scope, w.query_id)] = _Pending(expires=0.0)
            record.expires = self.clock() + self.config.pending_ttl_s
            record.decision, record.scores, record.lam = w.decision, w.scores, w.lam
            record.audit, record.invoked, record.decided_at = w.audit, w.invoked, w.decided_at
            self._count_invoked(w.scope, record)
            entered = self._enter(w.scope, record, keys.pending(w.scope, w.query_id))
            if w.audit and not entered:  # kept one horizon longer for the sweep (route.lua)
                record.expires += self.config.pending_ttl_s
                horizon_end = w.decided_at + self.config.pending_ttl_s
                self._audits.setdefault(w.scope, {})[w.query_id] = horizon_end
            results.append(RouteResult(w.decision, True, entered))
        return results

    async def sweep_expired_audits(
        self, scope: str, *, now: float, epoch: int, limit: int = 100
    ) -> SweepResult:
        """See sweep.lua."""
        self._check()
        self._fence(scope, epoch)
        audits = self._audits.get(scope, {})
        due = sorted((end, q) for q, end in audits.items() if end <= now)[:limit]
        entered = lost = 0
        for _, query_id in due:
            del audits[query_id]
            record = self._live(scope, query_id)
            if record is None or record.decision is None:
                lost += 1
            elif not record.entered:
                pending_key = keys.pending(scope, query_id)
                entered += self._enter(scope, record, pending_key, worst_case=True)
        expired, lost_before = self._expired.get(scope, (0, 0))
        self._expired[scope] = (expired + entered, lost_before + lost)
        return SweepResult(entered, lost, expired + entered)

    async def feedback(self, writes: Sequence[LabelWrite]) -> list[FeedbackOutcome]:
        self._check()
        return [self._merge(w) for w in writes]

    def _merge(self, w: LabelWrite) -> FeedbackOutcome:
        record = self._live(w.scope, w.query_id)
        if record is None:
            expires = self.clock() + self.config.pending_ttl_s
            record = self._pending[(w.scope, w.query_id)] = _Pending(expires=expires)
        added = {m: int(y) for m, y in w.labels.items() if m not in record.labels}
        conflict = any(record.labels.get(m, y) != y for m, y in w.labels.items())
        record.labels.update(added)
        if record.decision is None:
            if added:
                return FeedbackOutcome.HELD
            return FeedbackOutcome.CONFLICT if conflict else FeedbackOutcome.DUPLICATE
        self._count_invoked(w.scope, record)
        if self._enter(w.scope, record, keys.pending(w.scope, w.query_id)):
            return FeedbackOutcome.ENTERED
        if conflict:
            return FeedbackOutcome.CONFLICT
        return FeedbackOutcome.JOINED if added else FeedbackOutcome.DUPLICATE

    async def read_window(
        self, scope: str, *, after: str | None = None, count: int = 10_000
    ) -> list[WindowEntry]:
        self._check()
        window = self._windows.get(scope, [])
        start = 0
        if after is not None:
            key = StreamId.parse(after)
            later = (i for i, e in enumerate(window) if StreamId.parse(e.id) > key)
            start = next(later, len(window))
        return window[start : start + count]

    async def trim_window(self, scope: str, *, min_id: str, epoch: int) -> None:
        self._check()
        self._fence(scope, epoch)
        key = StreamId.parse(min_id)
        kept = [e for e in self._windows.get(scope, []) if StreamId.parse(e.id) >= key]
        self._windows[scope] = kept

    async def load_threshold(self, scope: str) -> bytes | None:
        self._check()
        stored = self._thresholds.get(scope)
        return None if stored is None else stored[1]

    async def save_threshold(
        self, scope: str, version: int, threshold: bytes, *, epoch: int
    ) -> bool:
        self._check()
        self._fence(scope, epoch)
        if version <= self._thresholds.get(scope, (0, b""))[0]:
            return False
        self._thresholds[scope] = (version, threshold)
        history = self._history.setdefault(scope, [])
        history.append(threshold)
        del history[: max(0, len(history) - self.config.history_size)]
        return True

    async def threshold_history(self, scope: str, *, count: int = 1000) -> list[bytes]:
        self._check()
        return self._history.get(scope, [])[-count:]

    async def upper_bound(self, scope: str) -> tuple[int, int]:
        self._check()
        return self._upper.get(scope, (0, 0))

    async def save_alert(self, scope: str, alert: bytes, *, epoch: int) -> None:
        self._check()
        self._fence(scope, epoch)
        kept = self._alerts.setdefault(scope, [])
        kept.append(alert)
        del kept[: max(0, len(kept) - self.config.history_size)]

    async def alerts(self, scope: str, *, count: int = 1000) -> list[bytes]:
        self._check()
        return self._alerts.get(scope, [])[-count:]

    async def load_monitor(self, scope: str) -> dict[str, str]:
        self._check()
        return dict(self._monitor.get(scope, {}))

    async def save_monitor(self, scope: str, state: Mapping[str, str], *, epoch: int) -> None:
        self._check()
        if state:
            self._fence(scope, epoch)
            self._monitor.setdefault(scope, {}).update(state)

    async def hold_lease(
        self, scope: str, holder: str, *, ttl_s: float, last_epoch: int | None
    ) -> Lease:
        """See lease.lua."""
        self._check()
        live, expires = self._leases.get(scope, (None, 0.0))
        now = self.clock()
        held = live if live is not None and expires > now else None
        if held is not None and held.holder != holder:
            return held
        if held is None and last_epoch is not None and self._epochs.get(scope) == last_epoch:
            epoch = last_epoch  # nobody took it since it lapsed
        elif held is not None and held == (last_epoch, holder):
            epoch = held.epoch  # a renewal
        else:
            epoch = self._epochs[scope] = self._epochs.get(scope, 0) + 1
        lease = Lease(epoch, holder)
        self._leases[scope] = (lease, now + ttl_s)
        return lease

    async def release_lease(self, scope: str, holder: str, *, epoch: int) -> None:
        self._check()
        live, _ = self._leases.get(scope, (None, 0.0))
        if live == Lease(epoch, holder):
            del self._leases[scope]

    async def ping(self) -> bool:
        return self.up

    async def close(self) -> None:
        pass
