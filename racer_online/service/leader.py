"""The leader's work: read new window records, watch their outcomes, recalibrate.

Exactly one worker (the Faust leader) runs this on a short timer. It keeps each scope's
window in memory, reads only what entered since its last look, and stores every new
threshold with a version so that the other workers pick it up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from racer_online import core
from racer_online.messages import AlertMessage, Status, ThresholdMessage
from racer_online.service import metrics
from racer_online.service.scope import ScopeState
from racer_online.settings import Settings
from racer_online.store import Store

READ_CHUNK = 10_000


@dataclass(frozen=True)
class Updates:
    """What a leader tick publishes."""

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
    ) -> None:
        self.settings = settings
        self.store = store
        self.scopes = scopes  # shared with the service, which routes on their thresholds
        self.clock = clock
        self.started_at = clock()

    def forget_windows(self) -> None:
        """Leadership was elsewhere: re-read windows and monitor state from the store."""
        for scope in self.scopes.values():
            scope.forget_window()

    async def recalibrate_due(self) -> Updates:
        """Leader tick: read new window records, watch them, recalibrate scopes that are due."""
        now = self.clock()
        thresholds: list[ThresholdMessage] = []
        alerts: list[AlertMessage] = []
        for scope in self.scopes.values():
            drift, trimmed = await self._sync_window(scope, now)
            elapsed = now - scope.calibrated_at >= self.settings.recalibrate_interval_s
            reason = None
            if drift is not None:
                alerts.append(drift)
                reason = "drift"
            elif scope.new_records >= self.settings.recalibrate_every_records:
                reason = "records"
            elif elapsed and (scope.new_records or trimmed or scope.calibrated_at == -np.inf):
                reason = "timer"
            if reason is not None:
                update = await self.recalibrate(scope.name, reason=reason, synced=True)
                thresholds += [update] if update is not None else []
            stale = self._stale_alert(scope, now)
            alerts += [stale] if stale is not None else []
        for alert in alerts:
            await self.store.save_alert(alert.scope, alert.to_bytes())
            metrics.ALERTS.labels(alert.scope, alert.kind).inc()
        return Updates(thresholds, alerts)

    async def recalibrate(
        self, scope_name: str, *, reason: str, synced: bool = False
    ) -> ThresholdMessage | None:
        """Compute, store and apply a new threshold; None if a newer one was stored."""
        scope = self.scopes[scope_name]
        now = self.clock()
        if not synced:
            await self._sync_window(scope, now)
        started = time.perf_counter()
        update = self._calibrate(scope, reason=reason, now=now)
        upper_n, upper_misses = await self.store.upper_bound(scope.name)
        if upper_n:
            update = update.model_copy(
                update={"upper_bound_n": upper_n, "upper_bound_miss_rate": upper_misses / upper_n}
            )
        metrics.RECALIBRATION_SECONDS.labels(scope.name).observe(time.perf_counter() - started)
        scope.new_records, scope.calibrated_at = 0, now
        if not await self.store.save_threshold(scope.name, update.version, update.to_bytes()):
            stored = await self.store.load_threshold(scope.name)  # another leader was first
            if stored is not None:
                scope.apply(ThresholdMessage.parse(stored))
            return None
        scope.apply(update)
        if update.status == "certified":
            scope.monitor.after_drift = False
        return update

    async def _sync_window(self, scope: ScopeState, now: float) -> tuple[AlertMessage | None, int]:
        """Read records entered since the last read, watch their outcomes, trim the window."""
        before = len(scope.window)
        while True:
            entries = await self.store.read_window(scope.name, after=scope.window.last_id)
            scope.window.append(entries)
            if len(entries) < READ_CHUNK:
                break
        fresh = len(scope.window) - before
        scope.new_records += fresh
        drift = await self._watch(scope, start=before, now=now) if fresh else None
        min_ms = int((now - self.settings.window_max_age_s) * 1000)
        trimmed = scope.window.trim(max_records=self.settings.window_size, min_ms=min_ms)
        if trimmed:
            await self.store.trim_window(scope.name, min_id=f"{min_ms}-0")
        metrics.WINDOW_RECORDS.labels(scope.name).set(len(scope.window))
        return drift, trimmed

    async def _watch(self, scope: ScopeState, *, start: int, now: float) -> AlertMessage | None:
        """Exact outcomes of new window records: realised risk, ACI level, drift test."""
        cfg, mon, settings = scope.config, scope.monitor, self.settings
        if not mon.loaded:
            state = await self.store.load_monitor(scope.name)
            mon.last_id, mon.loaded = state.get("last_id"), True
            mon.alpha_t = float(state.get("alpha_t", cfg.alpha)) if cfg.aci_gamma else None
        _, required = scope.window_levels(start)
        misses = scope.window.lam[start:] < required  # each at the threshold it was decided with
        ids = scope.window.ids[start:]
        mon.recent = np.append(mon.recent, misses)[-settings.n_recent :]
        new = misses[[_id_key(i) > _id_key(mon.last_id) for i in ids]]  # not yet applied
        if not new.size:
            return None
        metrics.EXACT_OUTCOMES.labels(scope.name).inc(new.size)
        metrics.EXACT_MISSES.labels(scope.name).inc(int(new.sum()))
        metrics.REALISED_MISS_RATE.labels(scope.name).set(float(mon.recent.mean()))
        if mon.alpha_t is not None and cfg.aci_gamma is not None:
            mon.alpha_t = core.aci_level(mon.alpha_t, new, alpha=cfg.alpha, gamma=cfg.aci_gamma)
        mon.last_id, mon.since_test = ids[-1], mon.since_test + new.size
        state = {"last_id": mon.last_id} | ({"alpha_t": repr(mon.alpha_t)} if mon.alpha_t else {})
        await self.store.save_monitor(scope.name, state)
        if mon.since_test < settings.k_test:
            return None
        mon.since_test = 0
        test = core.drift_test(mon.recent, alpha=cfg.alpha, delta_monitor=settings.delta_monitor)
        if not test.drift:
            return None
        # Restart the window from the recent segment: older records describe old traffic.
        scope.window.keep_from(len(scope.window) - min(len(scope.window), test.n))
        await self.store.trim_window(scope.name, min_id=scope.window.ids[0])
        mon.recent, mon.after_drift = np.zeros(0, bool), True
        return AlertMessage(
            scope=scope.name, kind="drift", at=now,
            message=f"{test.misses} misses in the last {test.n} audited decisions against "
            f"alpha = {cfg.alpha} (p = {test.p_value:.2g}): window restarted",
            evidence={"misses": test.misses, "n": test.n, "p_value": test.p_value,
                      "alpha": cfg.alpha, "delta_monitor": settings.delta_monitor,
                      "window_restart_id": scope.window.ids[0]},
        )  # fmt: skip

    def _stale_alert(self, scope: ScopeState, now: float) -> AlertMessage | None:
        """Once per limit: no certified threshold is younger than ``threshold_max_age_s``."""
        mon, limit = scope.monitor, self.settings.threshold_max_age_s
        if scope.threshold.status == "certified":
            mon.last_certified_at = scope.threshold.computed_at
        age = now - (mon.last_certified_at or self.started_at)
        if age <= limit or now - mon.stale_alerted_at < limit:
            return None
        mon.stale_alerted_at = now
        return AlertMessage(
            scope=scope.name, kind="stale_calibration", at=now,
            message=f"no certified threshold for {age:.0f} s (limit {limit:.0f} s); "
            f"routing on a {scope.threshold.status} threshold",
            evidence={"age_s": age, "limit_s": limit, "status": scope.threshold.status,
                      "version": scope.threshold.version},
        )  # fmt: skip

    def _calibrate(self, scope: ScopeState, *, reason: str, now: float) -> ThresholdMessage:
        cfg, window, current, mon = scope.config, scope.window, scope.threshold, scope.monitor
        n = len(window)
        found = None
        if n:
            levels, required = scope.window_levels()
            if n >= self.settings.min_records:
                if mon.alpha_t is not None:
                    found = core.aci_threshold(
                        required, alpha_t=mon.alpha_t, delta=cfg.delta, bound=cfg.bound
                    )
                else:
                    found = core.threshold_from_required(
                        required, alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound
                    )
        status: Status
        if found is not None and found.certified:
            status, lam = "certified", found.lam_hat
        elif current.status in ("certified", "stale") and not mon.after_drift:
            status, lam = "stale", current.lam  # keep the last certified threshold
        else:
            status, lam = "fallback", core.FALLBACK_LAM
        stats: dict[str, Any] = {"alpha_t": mon.alpha_t}
        if n:
            chosen = core.set_stats(levels, lam, n_models=len(scope.models), prices=scope.prices)
            stats |= {
                "empirical_risk": float(np.mean(required > lam)),
                "mean_set_size": chosen.mean_set_size,
                "abstain_rate": chosen.abstain_rate,
                "mean_price": chosen.mean_cost,
                "window_start": window.entered_ms[0] / 1000,
                "window_end": window.entered_ms[-1] / 1000,
                "per_model": scope.model_figures(levels, lam),
            }
            metrics.EMPIRICAL_RISK.labels(scope.name).set(float(np.mean(required > lam)))
        realised = core.realised_risk(mon.recent)
        if realised is not None:
            stats |= {
                "realised_n": realised.n,
                "realised_miss_rate": realised.rate,
                "realised_low": realised.low,
                "realised_high": realised.high,
            }
        return ThresholdMessage(
            scope=scope.name, version=current.version + 1, lam=lam, status=status,
            certified=status == "certified", n=n, alpha=cfg.alpha, delta=cfg.delta,
            bound=cfg.bound, rule=cfg.rule, miss=cfg.miss,
            m_star=found.m_star if found else -1, reason=reason, computed_at=now, **stats,
        )  # fmt: skip


def _id_key(stream_id: str | None) -> tuple[int, int]:
    if stream_id is None:
        return (-1, -1)
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
