"""The leader's work: read new window records, watch them, recalibrate. A thin shell over
`core.policy` (the threshold policy), `service.calibration` (the numpy work, run in a
thread), `service.window_sync` (the window and the drift channels) and `service.lease`.

One worker (the Faust leader) runs `recalibrate_due` on a short timer. Per scope it first
holds the scope's lease; every store write of the tick carries the lease's epoch, so a
leader that was replaced while it stalled or was cut off from Kafka writes nothing. While
it keeps the same epoch it keeps each scope's window in memory and reads only what entered
since its last look; a new epoch means another leader may have written, so it re-reads.
Every new threshold is stored with a version so that the other workers pick it up; the
outbox (`service.outbox`) publishes what the store holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from racer_online.errors import FencedError, StateLostError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.service import calibration, identity, metrics
from racer_online.service import drift as watch
from racer_online.service.lease import LeaderLease
from racer_online.service.outbox import Outbox
from racer_online.service.scope import ScopeState
from racer_online.service.state_loss import survive
from racer_online.service.window_sync import WindowSync
from racer_online.settings import Settings
from racer_online.store import Store


@dataclass(frozen=True)
class Updates:
    """What a leader tick stored (its outbox publishes it)."""

    thresholds: list[ThresholdMessage]
    alerts: list[AlertMessage]


class Leader:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        scopes: dict[str, ScopeState],
        *,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scopes = scopes  # the service's own dict: it routes on their thresholds
        self.clock = clock
        self.started_at = clock()
        self.lease = LeaderLease(store, ttl_s=settings.leader_lease_s, holder=holder)
        self.windows = WindowSync(settings, store, clock=clock)
        self.outbox = Outbox(settings, store, self.lease)  # publishes what the leader stored
        # One tick at a time: the calibration thread reads the scope's window and monitor.
        self._ticking = asyncio.Lock()
        self._lost: dict[str, AlertMessage] = {}  # state_lost alerts to raise when leading

    async def know(self, scope: ScopeState) -> None:
        """Learn the incarnation of the scope's state before the first write (once)."""
        if not scope.incarnation:
            scope.incarnation, _ = await self.store.current(scope.name)
            scope.threshold = scope.threshold.model_copy(update={"incarnation": scope.incarnation})

    def state_lost(self, scope_name: str, found: int, *, why: str) -> None:
        """Redis lost the scope's state (`service.state_loss`): drop what this worker holds
        of it; the leader raises the alert once it leads the scope under the new state."""
        scope = self.scopes[scope_name]
        awaiting = self.windows.awaiting.pop(scope_name, 0)
        self._lost[scope_name] = survive(scope, found, why=why, awaiting_audits=awaiting)
        self.lease.forget(scope_name)

    def refused(self, lost: StateLostError) -> None:
        """A call refused for a stale incarnation; another coroutine may have handled it."""
        scope = self.scopes[lost.scope]
        if lost.found != scope.incarnation:
            before = scope.incarnation
            self.state_lost(lost.scope, lost.found, why=f"incarnation {before} is gone, "
                            f"{lost.found} began")  # fmt: skip

    async def recalibrate_due(self) -> Updates:
        """Leader tick: per scope it leads, read new window records, watch them, and
        recalibrate if due. A scope whose write the store refuses is left to its new leader."""
        async with self._ticking:
            now = self.clock()
            updates = Updates([], [])
            for scope in self.scopes.values():
                try:
                    epoch = await self._hold(scope)
                    if epoch is None:
                        continue
                    await self._tick(scope, now=now, epoch=epoch, updates=updates)
                except FencedError as refused:
                    self.lease.fenced(scope.name, refused)
                except StateLostError as lost:  # the next tick leads the new state
                    self.refused(lost)
            return updates

    async def recalibrate(self, scope_name: str, *, reason: str) -> ThresholdMessage | None:
        """Read the window and store a new threshold now; None if another worker leads the
        scope or stored a newer version."""
        scope = self.scopes[scope_name]
        async with self._ticking:
            try:
                epoch = await self._hold(scope)
                if epoch is None:
                    return None
                await self.windows.check_identity(scope, now=self.clock(), epoch=epoch)
                await self.windows.sync(scope, now=self.clock(), epoch=epoch)
                return await self._recalibrate(scope, reason=reason, epoch=epoch)
            except FencedError as refused:
                self.lease.fenced(scope_name, refused)
                return None
            except StateLostError as lost:
                self.refused(lost)
                return None

    async def release(self) -> None:
        """Leadership moved elsewhere, or the worker stops: give the leases back now."""
        async with self._ticking:
            await self.lease.release()

    async def _hold(self, scope: ScopeState) -> int | None:
        """The epoch to write the scope under; None while another worker leads it."""
        await self.know(scope)
        held = await self.lease.hold(scope.name, incarnation=scope.incarnation)
        if held is None:
            return None
        if held.new and scope.monitor.loaded:
            scope.forget_window()  # another leader may have written since: re-read it all
        if held.new:
            try:
                await self.outbox.open(scope.name, epoch=held.epoch)
            except FencedError as refused:
                self.lease.fenced(scope.name, refused)
                return None
        return held.epoch

    async def _tick(self, scope: ScopeState, *, now: float, epoch: int, updates: Updates) -> None:
        windows = self.windows
        lost = self._lost.get(scope.name)
        if lost is not None:  # kept until stored: a refused write raises it at a later tick
            await self.store.save_alert(scope.name, lost.to_bytes(), epoch=epoch)
            del self._lost[scope.name]
            metrics.ALERTS.labels(scope.name, lost.kind).inc()
            updates.alerts.append(lost)
        changed = await windows.check_identity(scope, now=now, epoch=epoch)
        await windows.sweep_expired_audits(scope.name, now=now, epoch=epoch)
        drift, trimmed = await windows.sync(scope, now=now, epoch=epoch)
        drift = drift or await windows.watch_free(scope, now=now, epoch=epoch)
        reason = self._reason(scope, drift=drift is not None, trimmed=trimmed, now=now)
        if changed is not None:
            reason = "scope_changed"  # routed on every model from now: say so at once
        if reason is not None:
            update = await self._recalibrate(scope, reason=reason, epoch=epoch)
            updates.thresholds.extend([update] if update is not None else [])
        stale = calibration.stale_alert(scope, self.settings, now=now, started_at=self.started_at)
        for alert in (a for a in (changed, drift, stale) if a is not None):
            await self.store.save_alert(scope.name, alert.to_bytes(), epoch=epoch)
            metrics.ALERTS.labels(alert.scope, alert.kind).inc()
            updates.alerts.append(alert)

    def _reason(self, scope: ScopeState, *, drift: bool, trimmed: int, now: float) -> str | None:
        """Why the scope recalibrates at this tick, if it does."""
        if drift:
            return "drift"
        if scope.recalibrate_now is not None:  # a stored threshold of other settings
            return scope.recalibrate_now
        if scope.new_records and scope.monitor.segment_from is not None:
            return "segment"  # route on the segment's threshold as soon as it certifies
        if scope.new_records and scope.threshold.status != "certified":
            return "until_certified"  # leave lam = 1 as soon as the window certifies
        if scope.new_records >= min(
            self.settings.recalibrate_every_records, 1 + len(scope.window) // 10
        ):  # a young window's threshold moves most: recalibrate as it grows by 10%
            return "records"
        elapsed = now - scope.calibrated_at >= self.settings.recalibrate_interval_s
        if elapsed and (scope.new_records or trimmed or scope.calibrated_at == -math.inf):
            return "timer"
        return None

    async def _recalibrate(
        self, scope: ScopeState, *, reason: str, epoch: int
    ) -> ThresholdMessage | None:
        """Compute, store and apply a new threshold; None if a newer one was stored."""
        now = self.clock()
        started = time.perf_counter()
        if await self._confirm_segment(scope, epoch=epoch):
            reason = "confirm"
        expired = self.windows.expired_audits.get(scope.name, 0)
        update = await asyncio.to_thread(
            calibration.next_threshold, scope, self.settings, reason=reason, now=now,
            expired_audits=expired,
        )  # fmt: skip
        upper_n, upper_misses = await self.store.upper_bound(scope.name)
        if upper_n:
            update = update.model_copy(
                update={"upper_bound_n": upper_n, "upper_bound_miss_rate": upper_misses / upper_n}
            )
        metrics.RECALIBRATION_SECONDS.labels(scope.name).observe(time.perf_counter() - started)
        scope.new_records, scope.calibrated_at, scope.recalibrate_now = 0, now, None
        saved = await self.store.save_threshold(
            scope.name, update.version, update.to_bytes(), epoch=epoch
        )
        if not saved:
            stored = await self.store.load_threshold(scope.name)  # a newer version is there
            if stored is not None:
                newer = ThresholdMessage.parse(stored)
                if identity.refusal(newer, scope.config, scope.identity.fingerprint) is None:
                    scope.apply(newer)
                else:  # another identity's or settings': never routed on; try again after it
                    scope.seen_version = max(scope.seen_version, newer.version)
                    scope.calibrated_at = -math.inf
            return None
        scope.apply(update)
        if update.status == "certified" and scope.monitor.segment_from is None:
            scope.monitor.after_drift = False
        return update

    async def _confirm_segment(self, scope: ScopeState, *, epoch: int) -> bool:
        """A full segment replaces the window (the traffic changed) or merges back."""
        mon = scope.monitor
        if mon.segment_from is None:
            return False
        replace = await asyncio.to_thread(calibration.segment_replaces, scope, self.settings)
        if replace is None:
            return False
        if replace:
            scope.window.keep_decided_from(mon.segment_from)
            mon.window_from = mon.anytime_from = mon.segment_from
            if scope.window.ids:
                await self.store.trim_window(scope.name, min_id=scope.window.ids[0], epoch=epoch)
        mon.segment_from, mon.after_drift = None, False
        await self.store.save_monitor(scope.name, watch.saved_state(mon), epoch=epoch)
        return True
