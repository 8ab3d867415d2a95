"""Watching live outcomes: realised risk and the ACI controller (drift: core/drift.py).

An *exact outcome* is the loss of an audited, fully graded live decision at the
threshold that decision used (docs/method.md section 5): ``miss = lam_used < t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest

from racer_online.core.bounds import Bound
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


def aci_level(alpha_t: float, misses: NDArray[np.bool_], *, alpha: float, gamma: float) -> float:
    """Adaptive conformal level after these outcomes, in order (Gibbs & Candes 2021).

    ``alpha_t+1 = min(1, alpha_t + gamma * (alpha - miss_t))``. Never clipped at 0: that
    breaks the long-run bound ``(max(alpha_1, 1 - alpha_1) + gamma) / (gamma T)``. Clipped
    at 1: under ``cumulative`` and ``cost`` the set at ``lam = 0`` still holds the top
    option, so ``alpha_t >= 1`` does not force misses and the level would wind up in calm
    traffic, delaying the reaction to a shift. Gibbs and Candes's argument only needs
    ``alpha_t`` to stay within ``[-gamma, 1 + gamma]``, which the clip keeps.
    """
    if gamma <= 0:
        raise InvalidInputError(f"gamma must be > 0, got {gamma}")
    for miss in np.asarray(misses, bool).tolist():
        alpha_t = min(1.0, alpha_t + gamma * (alpha - miss))
    return float(alpha_t)


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
