"""The leader's work: read new window records, watch them, recalibrate. A thin shell:
the policy is in `racer_online.core.policy`, the drift channels in `service.drift`.

Exactly one worker (the Faust leader) runs this on a short timer. It keeps each scope's
window in memory, reads only what entered since its last look, and stores every new
threshold with a version so that the other workers pick it up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from racer_online import core
from racer_online.core import policy
from racer_online.errors import ConfigError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.service import drift as watch
from racer_online.service import metrics
from racer_online.service.scope import ScopeState
from racer_online.service.window import pack_scores
from racer_online.settings import Settings
from racer_online.store import Store, WindowEntry

READ_CHUNK = 10_000
SWEEP_CHUNK = 100  # audits per sweep call: each call blocks Redis as briefly as a route call


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
        self.scopes = scopes  # the service's own dict: it routes on their thresholds
        self.clock = clock
        self.started_at = clock()
        self.expired_audits: dict[str, int] = {}  # scope -> entered as a worst case, in all

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
            await self._sweep_expired_audits(scope.name, now)
            drift, trimmed = await self._sync_window(scope, now)
            drift = drift or await self._watch_free(scope, now)
            elapsed = now - scope.calibrated_at >= self.settings.recalibrate_interval_s
            reason = None
            if drift is not None:
                alerts.append(drift)
                reason = "drift"
            elif scope.new_records and scope.monitor.segment_from is not None:
                reason = "segment"  # route on the segment's threshold as soon as it certifies
            elif scope.new_records and scope.threshold.status != "certified":
                reason = "uncertified"  # leave lam = 1 as soon as the window certifies
            elif scope.new_records >= min(
                self.settings.recalibrate_every_records, 1 + len(scope.window) // 10
            ):  # a young window's threshold moves most: recalibrate as it grows by 10%
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
        if await self._confirm_segment(scope):
            reason = "confirm"
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
        if update.status == "certified" and scope.monitor.segment_from is None:
            scope.monitor.after_drift = False
        return update

    async def _sweep_expired_audits(self, scope_name: str, now: float) -> None:
        """Audits whose grading never completed enter the window as a worst case: a label
        missing because of the query (not at random) would otherwise bias the risk low."""
        while True:
            swept = await self.store.sweep_expired_audits(scope_name, now=now, limit=SWEEP_CHUNK)
            self.expired_audits[scope_name] = swept.expired_total
            metrics.EXPIRED_AUDITS.labels(scope_name).inc(swept.entered)
            metrics.LOST_AUDITS.labels(scope_name).inc(swept.lost)
            if swept.entered + swept.lost < SWEEP_CHUNK:
                return

    async def _sync_window(self, scope: ScopeState, now: float) -> tuple[AlertMessage | None, int]:
        """Read records entered since the last read, watch their outcomes, trim the window."""
        await self._load_monitor(scope)
        before = len(scope.window)
        while True:
            entries = await self.store.read_window(scope.name, after=scope.window.last_id)
            kept = [e for e in entries if e.decided_at >= scope.monitor.window_from]
            scope.window.append(kept)
            scope.window.last_id = entries[-1].id if entries else scope.window.last_id
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

    async def _load_monitor(self, scope: ScopeState) -> None:
        if not scope.monitor.loaded:
            cfg = scope.config
            state = await self.store.load_monitor(scope.name)
            watch.load_state(scope.monitor, state, alpha=cfg.alpha, aci=cfg.aci_gamma is not None)
            if cfg.warm_start is not None and scope.monitor.window_from == 0.0:
                scope.window.prepend(warm_start_entries(cfg.warm_start, scope, self.clock()))
            elif not state and self.settings.monitor:  # a new scope: its start is a segment
                scope.monitor.segment_from = watch.COLD_START

    async def _watch(self, scope: ScopeState, *, start: int, now: float) -> AlertMessage | None:
        """Exact outcomes of new window records: realised risk, ACI level, labelled channel."""
        cfg, mon, settings = scope.config, scope.monitor, self.settings
        _, required = scope.window_levels(start)
        lam_used = scope.window.lam[start:]
        misses = lam_used < required  # each at the threshold it was decided with
        ids = scope.window.ids[start:]
        mon.recent = np.append(mon.recent, misses)[-settings.n_recent :]
        fresh = np.array([_id_key(i) > _id_key(mon.last_id) for i in ids])  # not yet applied
        new = misses[fresh]
        if not new.size:
            return None
        metrics.EXACT_OUTCOMES.labels(scope.name).inc(new.size)
        metrics.EXACT_MISSES.labels(scope.name).inc(int(new.sum()))
        metrics.REALISED_MISS_RATE.labels(scope.name).set(float(mon.recent.mean()))
        if mon.alpha_t is not None and cfg.aci_gamma is not None:
            mon.alpha_t = core.aci_level(mon.alpha_t, new, alpha=cfg.alpha, gamma=cfg.aci_gamma)
        mon.last_id = ids[-1]
        alarm = watch.watch_labelled(scope, new, lam_used[fresh], settings, now=now)
        await self.store.save_monitor(scope.name, watch.saved_state(mon))
        return alarm

    async def _watch_free(self, scope: ScopeState, now: float) -> AlertMessage | None:
        counters = await self.store.upper_bound(scope.name)
        alarm = watch.watch_free(scope, counters, self.settings, now=now)
        await self.store.save_monitor(scope.name, watch.saved_state(scope.monitor))
        return alarm

    async def _confirm_segment(self, scope: ScopeState) -> bool:
        """A full segment replaces the window (the traffic changed) or merges back."""
        mon, cfg = scope.monitor, scope.config
        if mon.segment_from is None:
            return False
        in_segment = scope.window.decided_at >= mon.segment_from
        if in_segment.sum() < watch.records_to_confirm(mon, self.settings):
            return False
        _, required = scope.window_levels(in_segment)
        replace = policy.confirm(
            required, direction=_direction(mon.segment_direction), old_lam=mon.old_lam,
            alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
        )  # fmt: skip
        if replace:
            scope.window.keep_decided_from(mon.segment_from)
            mon.window_from = mon.segment_from
            if scope.window.ids:
                await self.store.trim_window(scope.name, min_id=scope.window.ids[0])
        mon.segment_from, mon.after_drift = None, False
        await self.store.save_monitor(scope.name, watch.saved_state(mon))
        return True

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
        levels, required = scope.window_levels() if n else (None, np.zeros(0))
        last = "fallback" if mon.after_drift and mon.segment_from is None else current.status
        choice = policy.window_choice(
            required, alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound, alpha_t=mon.alpha_t,
            min_records=self.settings.min_records, current=last, current_lam=current.lam,
        )  # fmt: skip
        audit_rate = None
        if mon.segment_from is not None:
            in_segment = window.decided_at >= mon.segment_from
            choice = policy.segment_choice(
                required[in_segment], direction=_direction(mon.segment_direction),
                alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
                current=policy.Choice(current.lam, current.status, current.m_star, current.n),
            )  # fmt: skip
            audit_rate = 1.0  # the segment fills at once, and only from decisions after tau
        lam, status = choice.lam, choice.status
        stats: dict[str, Any] = {
            "alpha_t": mon.alpha_t,
            "audit_rate": audit_rate,
            "expired_audits": self.expired_audits.get(scope.name, 0),
        }
        if n and levels is not None:
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
            certified=status == "certified", n=choice.n, alpha=cfg.alpha, delta=cfg.delta,
            bound=cfg.bound, rule=cfg.rule, miss=cfg.miss,
            m_star=choice.m_star, reason=reason, computed_at=now, **stats,
        )  # fmt: skip


def warm_start_entries(path: Path, scope: ScopeState, now: float) -> list[WindowEntry]:
    """Window entries from an offline records file, decided before any live decision."""
    from racer_online.offline.records import read_records

    records = read_records(path).fully_graded()
    missing = [m for m in scope.models if m not in records.models]
    if missing:
        raise ConfigError(f"warm start {path}: no column for model {missing[0]!r}")
    columns = [records.models.index(m) for m in scope.models]
    scores = records.scores[:, columns]
    given = records.p_abstain if records.p_abstain is not None else np.full(len(records), np.nan)
    p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
    labels = ["".join(str(int(y)) for y in row) for row in records.labels[:, columns]]
    entered = f"{int(now * 1000)}-0"  # they age out of the window like the records of now
    return [
        WindowEntry(entered, packed, y, core.FALLBACK_LAM, 0.0)
        for packed, y in zip(pack_scores(scores, p_abstain), labels, strict=True)
    ]


def _direction(value: str) -> policy.Direction:
    return "fall" if value == "fall" else "rise"


def _id_key(stream_id: str | None) -> tuple[int, int]:
    if stream_id is None:
        return (-1, -1)
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
