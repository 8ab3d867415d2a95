"""Drift detectors as pure functions: one-sided Bernoulli CUSUMs (Page 1954).

A CUSUM keeps ``S = max(0, S + log LR)`` of a rate ``p1`` against a reference ``p0`` and
alarms when ``S >= h``. While the true rate is on the null side of ``p0`` (at most ``p0``
when ``p1 > p0``, at least ``p0`` when ``p1 < p0``), the likelihood ratio started at any
time is a nonnegative supermartingale, so by Ville's inequality each start raises an
alarm with probability at most ``exp(-h)``: at most ``m exp(-h)`` false alarms in ``m``
observations in expectation (Lorden 1971). These are triggers: an alarm costs labels and
set size, never the validity of a certified threshold (docs/method.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import beta

from racer_online.errors import InvalidInputError

RATE_FLOOR = 1e-3  # keeps log ratios finite for rates at 0 or 1


@dataclass(frozen=True)
class Hypotheses:
    """A Bernoulli rate ``p0`` (the null side) against ``p1``."""

    p0: float
    p1: float

    def __post_init__(self) -> None:
        for name, p in (("p0", self.p0), ("p1", self.p1)):
            if not RATE_FLOOR <= p <= 1 - RATE_FLOOR:
                raise InvalidInputError(f"{name} must lie in [{RATE_FLOOR}, 1 - {RATE_FLOOR}]")
        if self.p0 == self.p1:
            raise InvalidInputError("p0 and p1 must differ")

    def log_ratios(self) -> tuple[float, float]:
        """Log likelihood ratio of one success and of one failure."""
        return (
            math.log(self.p1 / self.p0),
            math.log((1 - self.p1) / (1 - self.p0)),
        )


def threshold_for(false_alarm_rate: float, *, channels: int = 1) -> float:
    """``h`` such that ``channels`` detectors together raise at most ``false_alarm_rate``
    false alarms per observation (the union bound over channels)."""
    if not 0 < false_alarm_rate < 1:
        raise InvalidInputError(f"false_alarm_rate must lie in (0, 1), got {false_alarm_rate}")
    return math.log(channels / false_alarm_rate)


def cusum(
    stat: float, outcomes: NDArray[np.bool_], hyp: Hypotheses, *, h: float
) -> tuple[float, int | None]:
    """Run the CUSUM over outcomes in order: the new statistic and the index of the first
    outcome at which it alarmed (None: no alarm). After an alarm the caller restarts."""
    success, failure = hyp.log_ratios()
    steps = np.where(np.asarray(outcomes, bool), success, failure)
    for i, step in enumerate(steps.tolist()):
        stat = max(0.0, stat + step)
        if stat >= h:
            return stat, i
    return stat, None


def cusum_counts(stat: float, successes: int, n: int, hyp: Hypotheses) -> float:
    """One step over a batch known only by its counts (its order is lost): the batch's log
    likelihood ratio is added at once, a slightly slower detector, equally valid."""
    if not 0 <= successes <= n:
        raise InvalidInputError(f"successes must lie in [0, n], got {successes} of {n}")
    success, failure = hyp.log_ratios()
    return max(0.0, stat + successes * success + (n - successes) * failure)


def rate_interval(successes: int, n: int, *, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a Bernoulli rate, each side at ``confidence``."""
    if n <= 0:
        return 0.0, 1.0
    tail = 1 - confidence
    low = float(beta.ppf(tail, successes, n - successes + 1)) if successes else 0.0
    high = float(beta.ppf(confidence, successes + 1, n - successes)) if successes < n else 1.0
    return low, high


def clip_rate(p: float) -> float:
    return min(max(p, RATE_FLOOR), 1 - RATE_FLOOR)
