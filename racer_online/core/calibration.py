"""Required thresholds and the one-order-statistic calibration (docs/method.md 3-4).

Each record reduces to one number, its required threshold ``t``: the record is missed at
``lam`` exactly when ``lam < t``. The calibrated threshold is then one order statistic of
the ``t`` values, found in O(n) with ``np.partition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from racer_online.core.bounds import Bound, certified_miss_count, certifies
from racer_online.core.routing import set_stats
from racer_online.core.scoring import FloatArray, Miss, Rule, check_unit_interval, entry_levels
from racer_online.errors import InvalidInputError

FALLBACK_LAM = 1.0  # every option: the safe choice while nothing is certified
LabelArray = NDArray[np.bool_] | NDArray[np.integer]


@dataclass(frozen=True)
class Threshold:
    """The calibrated threshold of one window of required thresholds."""

    lam_hat: float
    n: int
    m_star: int
    certified: bool
    empirical_risk: float  # misses at lam_hat / n


@dataclass(frozen=True)
class Calibration(Threshold):
    """A threshold with the set statistics it gives on its own window."""

    alpha: float
    delta: float
    bound: Bound
    mean_set_size: float
    abstain_rate: float
    mean_cost: float | None

    @property
    def fallback(self) -> bool:
        return not self.certified


def required_thresholds(
    levels: FloatArray, labels: LabelArray, *, miss: Miss = "answerable"
) -> FloatArray:
    """``t = min`` entry level over the acceptable options ``A⁺(x)``.

    Parameters
    ----------
    levels : NDArray of shape (n, K) or (n, K + 1)
        Entry levels from :func:`entry_levels` under the same ``miss``.
    labels : NDArray of shape (n, K)
        1 where the model answered acceptably.
    """
    y = np.asarray(labels)
    n_models = levels.shape[1] - (miss == "augmented")
    if y.shape != (levels.shape[0], n_models):
        raise InvalidInputError(
            f"labels must have shape ({levels.shape[0]}, {n_models}), got {y.shape}"
        )
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise InvalidInputError("labels must be 0 or 1 (every model graded)")
        y = y.astype(bool)
    t = np.where(y, levels[:, :n_models], np.inf).min(axis=1)
    # No acceptable model: `answerable` never counts the record, `augmented` needs ⊥.
    unanswerable = levels[:, n_models] if miss == "augmented" else 0.0
    return np.where(y.any(axis=1), t, unanswerable)


def threshold_from_required(
    required: NDArray[np.floating], *, alpha: float, delta: float, bound: Bound = "binomial"
) -> Threshold:
    """The smallest ``lam`` with at most ``m*`` misses: ``t_(n - m*)``, ascending, 1-based."""
    t = np.asarray(required, dtype=np.float64)
    if t.ndim != 1:
        raise InvalidInputError(f"required thresholds must be one-dimensional, got {t.shape}")
    check_unit_interval("required thresholds", t)
    n = t.size
    m_star = certified_miss_count(n, alpha, delta, bound)
    if m_star < 0:
        lam = FALLBACK_LAM
    elif m_star >= n:
        lam = 0.0
    else:
        lam = _order_statistic(t, n - m_star - 1)
    misses = int(np.count_nonzero(t > lam))
    return Threshold(lam, n, m_star, m_star >= 0, misses / n)


def _order_statistic(t: FloatArray, k: int) -> float:
    """The k-th smallest value (0-based) of values in [0, 1].

    Most required thresholds are often exactly 0 (the top-ranked option was right), and
    numpy's SIMD quickselect slows down many times over on such repeated values; the zeros
    are counted instead of partitioned.
    """
    positive = t[t > 0]
    k -= t.size - positive.size
    return 0.0 if k < 0 else float(np.partition(positive, k)[k])


def calibrate(
    scores: NDArray[np.floating],
    labels: LabelArray,
    *,
    alpha: float,
    delta: float,
    bound: Bound = "binomial",
    rule: Rule = "cumulative",
    miss: Miss = "answerable",
    p_abstain: NDArray[np.floating] | None = None,
    prices: NDArray[np.floating] | None = None,
) -> Calibration:
    """Calibrate RACER on fully graded records: scores (n, K) and labels (n, K)."""
    levels = entry_levels(scores, rule=rule, miss=miss, p_abstain=p_abstain, prices=prices)
    found = threshold_from_required(
        required_thresholds(levels, labels, miss=miss), alpha=alpha, delta=delta, bound=bound
    )
    stats = set_stats(levels, found.lam_hat, n_models=np.shape(scores)[1], prices=prices)
    return Calibration(
        **vars(found),
        alpha=alpha,
        delta=delta,
        bound=bound,
        mean_set_size=stats.mean_set_size,
        abstain_rate=stats.abstain_rate,
        mean_cost=stats.mean_cost,
    )


def oracle_threshold(
    required: NDArray[np.floating],
    *,
    alpha: float,
    delta: float,
    bound: Bound = "binomial",
    grid: NDArray[np.floating] | None = None,
) -> float:
    """Naive reference: recompute the risk at every ``lam`` of a grid, test each.

    The default grid ``{0} ∪ {t_i}`` is exact; a fixed grid is the benchmark's baseline.
    Kept for tests and benchmarks, never used on the live path.
    """
    t = np.asarray(required, dtype=np.float64)
    candidates = np.unique(np.append(t, 0.0)) if grid is None else np.sort(grid)
    misses = [int(np.count_nonzero(t > lam)) for lam in candidates]  # the risk at every lam
    certified = [certifies(m, t.size, alpha, delta, bound) for m in misses]
    return float(candidates[certified.index(True)]) if any(certified) else FALLBACK_LAM
