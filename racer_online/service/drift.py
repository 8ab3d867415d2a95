"""The drift monitor's channels on a scope's state: CUSUMs, alarms, segments. No I/O.

The leader feeds them what it read from the store and saves `saved_state` back, so that a
new leader resumes the statistics and the segment where the last one left them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from racer_online import core
from racer_online.core import drift, policy
from racer_online.messages import AlertMessage
from racer_online.service.identity import FINGERPRINT, MODELS, ROUTER
from racer_online.service.scope import Monitor, ScopeState
from racer_online.settings import Settings

COLD_START = 0.0  # a new scope's first segment: every decision is at or after it
FLOATS = ("labelled", "free_rise", "free_jump", "free_fall", "window_from", "old_lam",
          "covariate", "covariate_p0", "covariate_p1", "anytime_from")  # fmt: skip
PAIRS = ("free_seen", "covariate_seen")  # the store's counters at the last look
IDENTITY_FIELDS = (FINGERPRINT, MODELS, ROUTER)  # the window's scope identity


def channels(settings: Settings) -> int:
    """Detectors a decision feeds at most, for the union bound: the labelled one or the
    three free ones, and the covariate one when it is on."""
    return 4 if settings.monitor_covariate else 3


def alarm_threshold(settings: Settings) -> float:
    return drift.threshold_for(settings.monitor_false_alarm_rate, channels=channels(settings))


def saved_state(mon: Monitor) -> dict[str, str]:
    """The monitor's state as strings for the store (``alpha_t`` 0.0 included)."""
    state = {"last_id": mon.last_id or ""} | {name: repr(getattr(mon, name)) for name in FLOATS}
    if mon.alpha_t is not None:
        state["alpha_t"] = repr(mon.alpha_t)
    state["segment_from"] = "" if mon.segment_from is None else repr(mon.segment_from)
    state["segment_direction"] = mon.segment_direction
    for name in PAIRS:
        pair = getattr(mon, name)
        if pair is not None:
            state[name] = f"{pair[0]},{pair[1]}"
    state["covariate_cut"] = "" if mon.covariate_cut is None else repr(mon.covariate_cut)
    return state | mon.identity


def load_state(mon: Monitor, state: dict[str, str], *, alpha: float, aci: bool) -> None:
    mon.last_id, mon.loaded = state.get("last_id") or None, True
    mon.alpha_t = float(state.get("alpha_t", alpha)) if aci else None
    for name in FLOATS:
        if state.get(name):
            setattr(mon, name, float(state[name]))
    mon.segment_from = float(state["segment_from"]) if state.get("segment_from") else None
    mon.segment_direction = state.get("segment_direction", "rise")
    for name in PAIRS:
        if state.get(name):
            n, events = state[name].split(",")
            setattr(mon, name, (int(n), int(events)))
    cut = state.get("covariate_cut")
    mon.covariate_cut = float(cut) if cut else None
    mon.identity = {name: state[name] for name in IDENTITY_FIELDS if name in state}


def records_to_confirm(mon: Monitor, settings: Settings) -> int:
    """Full-label records a segment holds before it is confirmed (and the audit rate falls
    back to the base rate). A new scope's first segment fills to ``warmup_records``: it is
    the window every later threshold is certified on, so its records shrink sets for as
    long as it lasts. An alarm's segment fills to ``confirm_records``: it can be few,
    because most of its records are the decisions at lam = 1 made while it certified. Never
    more than the window holds: a segment that cannot fill would audit everything forever."""
    cold_start = mon.segment_from == COLD_START
    wanted = settings.warmup_records if cold_start else settings.confirm_records
    return min(wanted, settings.window_size)


def watching(scope: ScopeState, settings: Settings) -> bool:
    """The channels watch a certified threshold below 1 while no segment is open."""
    th = scope.threshold
    return settings.monitor and scope.monitor.segment_from is None and th.lam < core.FALLBACK_LAM


def watch_labelled(
    scope: ScopeState, misses: NDArray[np.bool_], lam_used: NDArray[np.float64],
    settings: Settings, *, now: float,
) -> AlertMessage | None:  # fmt: skip
    """Exact audited outcomes of decisions routed below lam = 1 (at 1 none can miss). It
    watches inside a segment too: a shift that comes while a segment fills restarts it."""
    mon, cfg = scope.monitor, scope.config
    if not settings.monitor or scope.threshold.lam >= core.FALLBACK_LAM:
        return None
    outcomes = misses[lam_used < core.FALLBACK_LAM]
    h = alarm_threshold(settings)
    mon.labelled, alarm = drift.cusum(
        mon.labelled, outcomes, policy.labelled_hypotheses(cfg.alpha), h=h
    )
    if alarm is None:
        return None
    evidence = {"channel": "labelled", "statistic": mon.labelled, "h": h, "alpha": cfg.alpha}
    return start_segment(scope, now=now, direction="rise", evidence=evidence)


def watch_free(
    scope: ScopeState, counters: tuple[int, int], settings: Settings, *, now: float
) -> AlertMessage | None:
    """Non-audited decisions graded on their invoked models: how many had all wrong."""
    mon, cfg = scope.monitor, scope.config
    seen, mon.free_seen = mon.free_seen, counters
    if seen is None or not watching(scope, settings) or not len(scope.window):
        return None
    n, wrong = counters[0] - seen[0], counters[1] - seen[1]
    if n <= 0:
        return None
    levels, _ = scope.window_levels()
    rise, jump, fall = policy.free_hypotheses(
        levels, scope.window.labels, scope.threshold.lam, alpha=cfg.alpha,
        confidence=1 - cfg.delta,
    )  # fmt: skip
    h = alarm_threshold(settings)
    if rise is not None:
        mon.free_rise = drift.cusum_counts(mon.free_rise, wrong, n, rise)
    if jump is not None:
        mon.free_jump = drift.cusum_counts(mon.free_jump, wrong, n, jump)
    if fall is not None:
        mon.free_fall = drift.cusum_counts(mon.free_fall, wrong, n, fall)
    detectors = (("rise", mon.free_rise, rise), ("rise", mon.free_jump, jump),
                 ("fall", mon.free_fall, fall))  # fmt: skip
    for direction, stat, hyp in detectors:
        if hyp is not None and stat >= h:
            evidence = {"channel": "free", "statistic": stat, "h": h, "p0": hyp.p0, "p1": hyp.p1}
            return start_segment(scope, now=now, direction=direction, evidence=evidence)
    return None


def watch_covariate(
    scope: ScopeState, counters: tuple[int, int], settings: Settings, *, now: float
) -> AlertMessage | None:
    """Routed decisions counted at routing time under the published cut: how many had a
    top score below it. No label, so no feedback lag."""
    mon = scope.monitor
    seen, mon.covariate_seen = mon.covariate_seen, counters
    if seen is None or mon.covariate_cut is None or not watching(scope, settings):
        return None
    n, low = counters[0] - seen[0], counters[1] - seen[1]
    if n <= 0:
        return None
    hyp = drift.Hypotheses(mon.covariate_p0, mon.covariate_p1)
    mon.covariate = drift.cusum_counts(mon.covariate, low, n, hyp)
    h = alarm_threshold(settings)
    if mon.covariate < h:
        return None
    evidence = {"channel": "covariate", "statistic": mon.covariate, "h": h, "p0": hyp.p0,
                "p1": hyp.p1, "cut": mon.covariate_cut}  # fmt: skip
    # The counts include decisions made at `now`: the segment starts strictly after them,
    # so that none of the queries that raised the alarm is in it.
    after = math.nextafter(now, math.inf)
    return start_segment(scope, now=after, direction="rise", evidence=evidence)


def set_covariate_reference(scope: ScopeState, settings: Settings) -> None:
    """A new cut from the window, once no segment is open and none is set. It stays until
    the next alarm: the reference holds for the window it was computed on, and a cut
    that moved with every tick would need its counts split by cut."""
    mon = scope.monitor
    if not (settings.monitor and settings.monitor_covariate):
        return
    if mon.segment_from is not None or mon.covariate_cut is not None or not len(scope.window):
        return
    k = len(scope.models)
    reference = policy.covariate_reference(
        scope.window.scores[:, :k].max(axis=1), confidence=1 - scope.config.delta
    )
    if reference is not None:
        mon.covariate_cut, hyp = reference
        mon.covariate_p0, mon.covariate_p1, mon.covariate = hyp.p0, hyp.p1, 0.0


def start_segment(
    scope: ScopeState, *, now: float, direction: str, evidence: dict[str, object]
) -> AlertMessage:
    mon = scope.monitor
    mon.segment_from, mon.segment_direction, mon.old_lam = now, direction, scope.threshold.lam
    mon.labelled = mon.free_rise = mon.free_jump = mon.free_fall = mon.covariate = 0.0
    mon.covariate_cut = None  # a segment routes unwatched; its confirmation sets a new cut
    mon.after_drift = True
    action = "routing on every model until" if direction == "rise" else "keeping lam until"
    return AlertMessage(
        scope=scope.name, kind="drift", at=now,
        message=f"the risk may have {'risen' if direction == 'rise' else 'fallen'} "
        f"({evidence['channel']} channel): {action} the decisions from now on certify",
        evidence=evidence | {"direction": direction, "segment_from": now,
                             "old_lam": mon.old_lam},
    )  # fmt: skip
