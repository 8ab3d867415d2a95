"""Watching live outcomes: realised risk, the drift test and the ACI controller.

An *exact outcome* is the loss of an audited, fully graded live decision at the
threshold that decision used (racer-method.md section 5): ``miss = lam_used < t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binom, binomtest

from racer_online.core.bounds import Bound, check_level
from racer_online.core.calibration import FALLBACK_LAM, Threshold, threshold_from_required
from racer_online.errors import InvalidInputError


@dataclass(frozen=True)
class RealisedRisk:
    """Miss rate of exact outcomes with its Clopper-Pearson interval."""

    misses: int
    n: int
    rate: float
    low: float
    high: float


def realised_risk(misses: NDArray[np.bool_], *, confidence: float = 0.95) -> RealisedRisk | None:
    """None when there is no outcome yet."""
    n = int(misses.size)
    if n == 0:
        return None
    k = int(np.count_nonzero(misses))
    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return RealisedRisk(k, n, k / n, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class DriftTest:
    misses: int
    n: int
    p_value: float  # P(Binom(n, alpha) >= misses)
    drift: bool


def drift_test(recent: NDArray[np.bool_], *, alpha: float, delta_monitor: float) -> DriftTest:
    """Declare drift when the recent misses are too many for a risk of ``alpha``.

    ``delta_monitor`` is small because the test repeats every ``k_test`` outcomes.
    """
    check_level("alpha", alpha)
    check_level("delta_monitor", delta_monitor)
    n, k = int(recent.size), int(np.count_nonzero(recent))
    if n == 0:
        raise InvalidInputError("the drift test needs at least one outcome")
    p = float(binom.sf(k - 1, n, alpha))
    return DriftTest(k, n, p, p < delta_monitor)


def aci_level(alpha_t: float, misses: NDArray[np.bool_], *, alpha: float, gamma: float) -> float:
    """Adaptive conformal level after these outcomes, in order (Gibbs & Candes 2021).

    ``alpha_t+1 = alpha_t + gamma * (alpha - miss_t)``, unclipped: a clip at 0 breaks the
    long-run bound ``(max(alpha_1, 1 - alpha_1) + gamma) / (gamma T)``.
    """
    if gamma <= 0:
        raise InvalidInputError(f"gamma must be > 0, got {gamma}")
    return float(alpha_t + gamma * (misses.size * alpha - np.count_nonzero(misses)))


def aci_threshold(
    required: NDArray[np.floating], *, alpha_t: float, delta: float, bound: Bound
) -> Threshold:
    """Threshold at the ACI working level ``alpha_t``.

    Outside (0, 1) the calibration is bypassed (it rejects such levels): ``alpha_t <= 0``
    asks for every option (``lam = 1``), ``alpha_t >= 1`` for ``lam = 0``.
    """
    t = np.asarray(required, dtype=np.float64)
    if 0 < alpha_t < 1:
        return threshold_from_required(t, alpha=alpha_t, delta=delta, bound=bound)
    lam = FALLBACK_LAM if alpha_t <= 0 else 0.0
    misses = int(np.count_nonzero(t > lam))
    return Threshold(lam, t.size, -1 if alpha_t <= 0 else t.size, alpha_t >= 1, misses / t.size)
