"""A scope's next threshold from its window and monitor: numpy only, no I/O, no awaits.

The leader runs `next_threshold` and `segment_replaces` in a thread (``asyncio.to_thread``)
so that their numpy work does not hold the event loop that heartbeats to Kafka and renews
the lease; only the tick holding the lease calls them, one at a time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from racer_online import core
from racer_online.core import policy
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.service import drift as watch
from racer_online.service import metrics
from racer_online.service.scope import ScopeState
from racer_online.settings import Settings


def next_threshold(
    scope: ScopeState, settings: Settings, *, reason: str, now: float, expired_audits: int
) -> ThresholdMessage:
    """The threshold the window certifies (or the segment's, while one is open)."""
    cfg, window, current, mon = scope.config, scope.window, scope.threshold, scope.monitor
    watch.set_covariate_reference(scope, settings)
    n = len(window)
    levels, required = scope.window_levels() if n else (None, np.zeros(0))
    last = "fallback" if mon.after_drift and mon.segment_from is None else current.status
    if math.isinf(mon.anytime_from):  # the `anytime` e-process lost records to a trim
        choice = policy.Choice(current.lam, current.status, current.m_star, current.n)
    else:
        counted = window.decided_at >= mon.anytime_from  # all but for `anytime` after a trim
        choice = policy.window_choice(
            required[counted], alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
            alpha_t=mon.alpha_t, min_records=settings.min_records, current=last,
            current_lam=current.lam,
        )  # fmt: skip
    audit_rate = None
    if mon.segment_from is not None:
        in_segment = window.decided_at >= mon.segment_from
        choice = policy.segment_choice(
            required[in_segment], direction=direction(mon.segment_direction),
            alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
            current=policy.Choice(current.lam, current.status, current.m_star, current.n),
        )  # fmt: skip
        audit_rate = 1.0  # the segment fills at once, and only from decisions after tau
    lam, status = choice.lam, choice.status
    stats: dict[str, Any] = {
        "alpha_t": mon.alpha_t, "audit_rate": audit_rate, "expired_audits": expired_audits,
        "covariate_cut": mon.covariate_cut,
    }  # fmt: skip
    if n and levels is not None:
        stats |= _window_stats(scope, levels, required, lam)
    realised = core.realised_risk(mon.recent)
    if realised is not None:
        stats |= {
            "realised_n": realised.n,
            "realised_miss_rate": realised.rate,
            "realised_low": realised.low,
            "realised_high": realised.high,
        }
    return ThresholdMessage(
        scope=scope.name, version=max(current.version, scope.seen_version) + 1, lam=lam,
        status=status, scope_id=scope.identity.fingerprint,
        certified=status == "certified", n=choice.n, alpha=cfg.alpha, delta=cfg.delta,
        bound=cfg.bound, rule=cfg.rule, miss=cfg.miss,
        m_star=choice.m_star, reason=reason, computed_at=now, incarnation=scope.incarnation,
        **stats,
    )  # fmt: skip


def _window_stats(
    scope: ScopeState, levels: np.ndarray, required: np.ndarray, lam: float
) -> dict[str, Any]:
    """What the sets at ``lam`` look like on the window: descriptive, not certified."""
    window = scope.window
    chosen = core.set_stats(levels, lam, n_models=len(scope.models), prices=scope.prices)
    empirical_risk = float(np.mean(required > lam))
    metrics.EMPIRICAL_RISK.labels(scope.name).set(empirical_risk)
    return {
        "empirical_risk": empirical_risk,
        "mean_set_size": chosen.mean_set_size,
        "abstain_rate": chosen.abstain_rate,
        "mean_price": chosen.mean_cost,
        "window_start": window.entered_ms[0] / 1000,
        "window_end": window.entered_ms[-1] / 1000,
        "per_model": scope.model_figures(levels, lam),
    }


def segment_replaces(scope: ScopeState, settings: Settings) -> bool | None:
    """Once the open segment is full: True if it replaces the window (the traffic changed),
    False if it merges back; None while it fills (or none is open)."""
    mon, cfg = scope.monitor, scope.config
    if mon.segment_from is None:
        return None
    in_segment = scope.window.decided_at >= mon.segment_from
    if in_segment.sum() < watch.records_to_confirm(mon, settings):
        return None
    _, required = scope.window_levels(in_segment)
    return policy.confirm(
        required, direction=direction(mon.segment_direction), old_lam=mon.old_lam,
        alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
    )  # fmt: skip


def stale_alert(
    scope: ScopeState, settings: Settings, *, now: float, started_at: float
) -> AlertMessage | None:
    """Once per limit: no certified threshold is younger than ``threshold_max_age_s``."""
    mon, limit = scope.monitor, settings.threshold_max_age_s
    if scope.threshold.status == "certified":
        mon.last_certified_at = scope.threshold.computed_at
    age = now - (mon.last_certified_at or started_at)
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


def direction(value: str) -> policy.Direction:
    return "fall" if value == "fall" else "rise"
