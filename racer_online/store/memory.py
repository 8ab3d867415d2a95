"""The in-memory twin of the Redis store: same semantics, for service tests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from racer_online.errors import FencedError, StateLostError, StoreUnavailableError
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
    redelivery_search,
)
from racer_online.store.codec import label_masks, new_record, window_entry
from racer_online.store.records import COUNTED, ENTERED, PendingRecord, mask_width, query_hash


class MemoryStore:
    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.up = True  # tests set it to False to act as an unreachable Redis
        # The last incarnation begun and epoch granted, kept through a flush: Redis' clock
        # (TIME) puts each new one above them, and this twin's clock may stand still.
        self._begun = self._granted = 0
        self.flush()
        for models in config.catalogues.values():
            mask_width(len(models))

    def flush(self) -> None:
        """Lose every key, as FLUSHALL or a restart without persistence does."""
        # (scope, slot, query hash) -> record; (scope, held slot, query hash) -> masks
        self._pending: dict[tuple[str, int, bytes], PendingRecord] = {}
        self._held: dict[tuple[str, int], dict[bytes, tuple[int, int]]] = {}
        self._windows: dict[str, list[WindowEntry]] = {}
        self._thresholds: dict[str, tuple[int, bytes]] = {}
        self._history: dict[str, list[bytes]] = {}
        self._alerts: dict[str, list[bytes]] = {}
        self._upper: dict[str, tuple[int, int]] = {}
        self._covariate: dict[str, tuple[int, int]] = {}
        self._monitor: dict[str, dict[str, str]] = {}
        self._alerts_stored: dict[str, int] = {}  # scope -> alerts ever stored: their ids
        self._outbox: dict[str, dict[str, str]] = {}
        self._audits: dict[str, dict[tuple[int, bytes], float]] = {}  # -> horizon end
        self._expired: dict[str, tuple[int, int]] = {}  # scope -> (expired, lost) audits
        self._last_id = (0, 0)
        self._leases: dict[str, tuple[Lease, float]] = {}  # scope -> live lease, its expiry
        self._epochs: dict[str, int] = {}  # scope -> lease epoch, the fencing token
        self._incarnations: dict[str, int] = {}  # scope -> when its state began (us)

    def _incarnation(self, scope: str) -> int:
        """See incarnation.lua."""
        if scope not in self._incarnations:
            self._begun = max(self._begun + 1, int(self.clock() * 1e6))
            self._incarnations[scope] = self._begun
        return self._incarnations[scope]

    def _refuse_lost(self, scope: str, expected: int) -> None:
        current = self._incarnation(scope)
        if expected and expected != current:
            raise StateLostError(scope, current, f"INCARNATION {current} of scope {scope} "
                                 f"(expected {expected})")  # fmt: skip

    def _refuse_lost_batch(self, writes: Sequence[PendingWrite] | Sequence[LabelWrite]) -> None:
        for scope, expected in {w.scope: w.incarnation for w in writes}.items():
            self._refuse_lost(scope, expected)

    def _fence(self, scope: str, epoch: int) -> None:
        """See fence.lua."""
        current = self._epochs.get(scope)
        if current != epoch:
            raise FencedError(f"FENCED lease epoch {epoch} of the scope is superseded by "
                              f"{current or 'none'}")  # fmt: skip

    def _check(self) -> None:
        if not self.up:
            raise StoreUnavailableError("memory store is down")

    def _slot(self, at: float) -> int:
        return int(at // self.config.slot_s)

    def _live(self, scope: str, slot: int, hash_: bytes) -> PendingRecord | None:
        """A record, until one slot after the horizon of its slot's last decision."""
        cfg = self.config
        if (slot + 2) * cfg.slot_s + cfg.pending_ttl_s <= self.clock():
            self._pending.pop((scope, slot, hash_), None)
            return None
        return self._pending.get((scope, slot, hash_))

    def _find(
        self, scope: str, hash_: bytes, newest: int, count: int
    ) -> tuple[int, PendingRecord] | None:
        """Newest first, as common.lua's find."""
        for slot in range(newest, newest - count, -1):
            record = self._live(scope, slot, hash_)
            if record is not None:
                return slot, record
        return None

    def _held_at(self, scope: str, hash_: bytes) -> tuple[int, tuple[int, int]] | None:
        """Held labels live from held_ttl_s to twice that: a held slot's key expires then."""
        newest = int(self.clock() // self.config.held_ttl_s)
        for gone in [k for k in self._held if k[0] == scope and k[1] < newest - 1]:
            del self._held[gone]
        for held_slot in (newest, newest - 1):
            masks = self._held.get((scope, held_slot), {}).get(hash_)
            if masks is not None:
                return held_slot, masks
        return None

    def _next_id(self) -> str:
        ms = int(self.clock() * 1000)
        self._last_id = (ms, self._last_id[1] + 1) if ms <= self._last_id[0] else (ms, 0)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    def _enter(self, scope: str, record: PendingRecord, hash_: bytes) -> PendingRecord:
        record = record._replace(flags=record.flags | ENTERED)
        n_models = len(self.config.catalogues[scope])
        window = self._windows.setdefault(scope, [])
        window.append(window_entry(self._next_id(), record.pack(n_models), hash_, n_models))
        del window[: max(0, len(window) - self.config.window_size)]
        return record

    def _settle(
        self, scope: str, slot: int, hash_: bytes, record: PendingRecord
    ) -> tuple[PendingRecord, bool]:
        """See common.lua's settle."""
        full = (1 << len(self.config.catalogues[scope])) - 1
        if not record.audit:
            if not record.counted and record.invoked & record.known == record.invoked:
                n, misses = self._upper.get(scope, (0, 0))
                self._upper[scope] = (n + 1, misses + int(record.invoked & record.correct == 0))
                record = record._replace(flags=record.flags | COUNTED)
            return record, False
        if record.entered or record.known != full:
            return record, False
        self._audits.get(scope, {}).pop((slot, hash_), None)
        return self._enter(scope, record, hash_), True

    async def route(self, writes: Sequence[PendingWrite]) -> list[RouteResult]:
        """See route.lua."""
        self._check()
        self._refuse_lost_batch(writes)
        results = []
        for w in writes:
            n_models, hash_ = len(self.config.catalogues[w.scope]), query_hash(w.query_id)
            slot = self._slot(w.decided_at)
            count, beyond = redelivery_search(w, self.config, self.clock())
            found = self._find(w.scope, hash_, slot, count)
            if found is not None:
                results.append(RouteResult(False, False, found[1]))
                continue
            record = PendingRecord.unpack(new_record(w, n_models), n_models)
            held = self._held_at(w.scope, hash_)
            if held is not None:
                del self._held[(w.scope, held[0])][hash_]
                record = record._replace(known=held[1][0], correct=held[1][1])
            if record.watched:
                n, low = self._covariate.get(w.scope, (0, 0))
                self._covariate[w.scope] = (n + 1, low + record.low_top)
            record, entered = self._settle(w.scope, slot, hash_, record)
            self._pending[(w.scope, slot, hash_)] = record
            if record.audit and not entered:
                due = w.decided_at + self.config.pending_ttl_s
                self._audits.setdefault(w.scope, {})[(slot, hash_)] = due
            results.append(RouteResult(True, entered, beyond=beyond))
        return results

    async def sweep_expired_audits(
        self, scope: str, *, now: float, epoch: int, limit: int = 100
    ) -> SweepResult:
        """See sweep.lua."""
        self._check()
        self._fence(scope, epoch)
        audits = self._audits.get(scope, {})
        due = sorted((end, member) for member, end in audits.items() if end <= now)[:limit]
        entered = lost = 0
        for _, (slot, hash_) in due:
            del audits[(slot, hash_)]
            record = self._live(scope, slot, hash_)
            if record is None:
                lost += 1
            elif not record.entered:
                self._pending[(scope, slot, hash_)] = self._enter(scope, record, hash_)
                entered += 1
        expired, lost_before = self._expired.get(scope, (0, 0))
        self._expired[scope] = (expired + entered, lost_before + lost)
        return SweepResult(entered, lost, expired + entered, len(audits))

    async def feedback(self, writes: Sequence[LabelWrite]) -> list[FeedbackOutcome]:
        self._check()
        self._refuse_lost_batch(writes)
        return [self._merge(w) for w in writes]

    def _merge(self, w: LabelWrite) -> FeedbackOutcome:
        """See feedback.lua."""
        cfg, hash_ = self.config, query_hash(w.query_id)
        known_ev, correct_ev = label_masks(w, cfg.catalogues[w.scope])
        newest = self._slot(self.clock()) + 1
        found = self._find(w.scope, hash_, newest, math.ceil(cfg.pending_ttl_s / cfg.slot_s) + 2)
        if found is None:
            held = self._held_at(w.scope, hash_)
            held_slot, (known, correct) = held or (int(self.clock() // cfg.held_ttl_s), (0, 0))
            known, correct, added, clash = _merged(known, correct, known_ev, correct_ev)
            if not added:
                return FeedbackOutcome.CONFLICT if clash else FeedbackOutcome.DUPLICATE
            self._held.setdefault((w.scope, held_slot), {})[hash_] = (known, correct)
            return FeedbackOutcome.HELD
        slot, record = found
        known, correct, added, clash = _merged(record.known, record.correct, known_ev, correct_ev)
        record, entered = self._settle(
            w.scope, slot, hash_, record._replace(known=known, correct=correct)
        )
        self._pending[(w.scope, slot, hash_)] = record
        if entered:
            return FeedbackOutcome.ENTERED
        if clash:
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

    async def reset_scope(self, scope: str, *, epoch: int) -> None:
        """See reset_scope.lua."""
        self._check()
        self._fence(scope, epoch)
        for key in [k for k in self._pending if k[0] == scope]:
            del self._pending[key]
        for held in [k for k in self._held if k[0] == scope]:
            del self._held[held]
        for kept in (self._windows, self._audits, self._upper, self._covariate, self._monitor):
            kept.pop(scope, None)

    async def load_threshold(self, scope: str) -> bytes | None:
        self._check()
        stored = self._thresholds.get(scope)
        return None if stored is None else stored[1]

    async def current(self, scope: str) -> tuple[int, bytes | None]:
        self._check()
        return self._incarnation(scope), await self.load_threshold(scope)

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

    async def covariate_counts(self, scope: str) -> tuple[int, int]:
        self._check()
        return self._covariate.get(scope, (0, 0))

    async def save_alert(self, scope: str, alert: bytes, *, epoch: int) -> None:
        self._check()
        self._fence(scope, epoch)
        kept = self._alerts.setdefault(scope, [])
        kept.append(alert)
        del kept[: max(0, len(kept) - self.config.history_size)]
        self._alerts_stored[scope] = self._alerts_stored.get(scope, 0) + 1

    async def alerts(self, scope: str, *, count: int = 1000) -> list[bytes]:
        self._check()
        return self._alerts.get(scope, [])[-count:]

    async def alerts_after(
        self, scope: str, after: str, *, count: int = 100
    ) -> list[tuple[str, bytes]]:
        """Ids as Redis would order them: ``0-<n>``, the n-th alert the scope stored."""
        self._check()
        kept = self._alerts.get(scope, [])
        first = self._alerts_stored.get(scope, 0) - len(kept) + 1  # the id of kept[0]
        ids = [StreamId(0, first + i) for i in range(len(kept))]
        newer = [(str(i), a) for i, a in zip(ids, kept, strict=True) if i > StreamId.parse(after)]
        return newer[:count]

    async def load_outbox(self, scope: str) -> dict[str, str]:
        self._check()
        return dict(self._outbox.get(scope, {}))

    async def save_outbox(self, scope: str, marks: Mapping[str, str], *, epoch: int) -> None:
        self._check()
        self._fence(scope, epoch)
        self._outbox.setdefault(scope, {}).update(marks)

    async def start_outbox(self, scope: str, *, epoch: int) -> None:
        self._check()
        self._fence(scope, epoch)
        newest = StreamId(0, self._alerts_stored.get(scope, 0))
        self._outbox.setdefault(scope, {}).setdefault("alert", str(newest))

    async def load_monitor(self, scope: str) -> dict[str, str]:
        self._check()
        return dict(self._monitor.get(scope, {}))

    async def save_monitor(self, scope: str, state: Mapping[str, str], *, epoch: int) -> None:
        self._check()
        if state:
            self._fence(scope, epoch)
            self._monitor.setdefault(scope, {}).update(state)

    async def hold_lease(
        self,
        scope: str,
        holder: str,
        *,
        ttl_s: float,
        last_epoch: int | None,
        incarnation: int = 0,
    ) -> Lease:
        """See lease.lua."""
        self._check()
        self._refuse_lost(scope, incarnation)
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
            at_least = max(int(now * 1e6), self._granted + 1)  # above all before, as TIME is
            epoch = self._epochs[scope] = max(self._epochs.get(scope, 0) + 1, at_least)
            self._granted = epoch
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


def _merged(
    known: int, correct: int, known_ev: int, correct_ev: int
) -> tuple[int, int, bool, bool]:
    """Labels after an event, whether it added any, whether it disagreed (feedback.lua)."""
    new = known_ev & ~known
    clash = bool(known_ev & known & (correct_ev ^ correct))
    return known | new, correct | (correct_ev & new), bool(new), clash
