"""Entry levels: the threshold at which each option joins a query's set.

Options are the K models and, under the ``augmented`` miss definition, the abstention
option ``⊥`` as the last column. The set at threshold ``lam`` is ``{j : e_j <= lam}``, so
sets are nested in ``lam`` by construction (docs/method.md section 2).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from racer_online.errors import InvalidInputError

Rule = Literal["cumulative", "threshold", "cost"]
Miss = Literal["answerable", "augmented"]
RULES: tuple[str, ...] = get_args(Rule)
MISSES: tuple[str, ...] = get_args(Miss)

FloatArray = NDArray[np.float64]


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInputError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def check_unit_interval(name: str, values: NDArray[np.floating]) -> None:
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{name} contain NaN or infinite values")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise InvalidInputError(f"{name} must lie in [0, 1]")


def option_scores(
    scores: FloatArray, *, miss: Miss, p_abstain: FloatArray | None = None
) -> FloatArray:
    """Scores of the options, shape (n, K) or (n, K + 1) with ``⊥`` last.

    ``p_abstain`` is the base router's own estimate that no model is right; without it
    ``p_⊥ = prod_k (1 - p_k)``, which assumes independent errors and gives larger sets.
    """
    if miss == "answerable":
        return scores
    if p_abstain is None:
        p_abstain = np.prod(1.0 - scores, axis=1)
    return np.column_stack([scores, p_abstain])


def entry_levels(
    scores: NDArray[np.floating],
    *,
    rule: Rule = "cumulative",
    miss: Miss = "answerable",
    p_abstain: NDArray[np.floating] | None = None,
    prices: NDArray[np.floating] | None = None,
) -> FloatArray:
    """Entry level of every option of every query.

    Parameters
    ----------
    scores : NDArray of shape (n, K)
        Base-router scores in [0, 1].
    p_abstain : NDArray of shape (n,), optional
        Learned score of ``⊥`` (used under ``augmented`` only).
    prices : NDArray of shape (K,) or (n, K), optional
        Model prices; required by the ``cost`` rule.

    Returns
    -------
    NDArray of shape (n, K) under ``answerable``, (n, K + 1) under ``augmented``.
    Ties keep catalogue order (stable sorts), with ``⊥`` last.
    """
    check_choice("rule", rule, RULES)
    check_choice("miss definition", miss, MISSES)
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise InvalidInputError(f"scores must have shape (n, K) with K >= 1, got {p.shape}")
    check_unit_interval("scores", p)
    p_bot = None
    if p_abstain is not None:
        p_bot = np.asarray(p_abstain, dtype=np.float64)
        if p_bot.shape != (p.shape[0],):
            raise InvalidInputError(f"p_abstain must have shape ({p.shape[0]},), got {p_bot.shape}")
        check_unit_interval("p_abstain", p_bot)
    options = option_scores(p, miss=miss, p_abstain=p_bot)
    if rule == "threshold":
        return 1.0 - options
    if rule == "cumulative":
        return _cumulative(options)
    if prices is None:
        raise InvalidInputError("the cost rule needs model prices")
    levels = _cascade(p, _broadcast_prices(prices, p.shape))
    if miss == "augmented":
        levels = np.column_stack([levels, 1.0 - options[:, -1]])
    return levels


def _broadcast_prices(prices: NDArray[np.floating], shape: tuple[int, ...]) -> FloatArray:
    c = np.asarray(prices, dtype=np.float64)
    if c.shape not in (shape[1:], shape):
        raise InvalidInputError(f"prices must have shape ({shape[1]},) or {shape}, got {c.shape}")
    if not np.all(np.isfinite(c)) or (c.size and c.min() < 0):
        raise InvalidInputError("prices must be finite and >= 0")
    return np.broadcast_to(c, shape)


def _cumulative(options: FloatArray) -> FloatArray:
    """APS-like: normalised score mass strictly before each option in the ranking."""
    total = options.sum(axis=1, keepdims=True)
    mass = np.where(total > 0, options / np.where(total > 0, total, 1.0), 1.0 / options.shape[1])
    order = np.argsort(-mass, axis=1, kind="stable")
    ranked = np.take_along_axis(mass, order, axis=1)
    before = np.zeros_like(ranked)
    np.cumsum(ranked[:, :-1], axis=1, out=before[:, 1:])
    levels = np.empty_like(before)
    np.put_along_axis(levels, order, np.minimum(before, 1.0), axis=1)
    return levels


def _cascade(scores: FloatArray, prices: FloatArray) -> FloatArray:
    """Cost cascade: ``1 - prod (1 - p_i)`` over the cheaper models tried before."""
    order = np.argsort(prices, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    survive = np.ones_like(ranked)
    np.cumprod(1.0 - ranked[:, :-1], axis=1, out=survive[:, 1:])
    levels = np.empty_like(survive)
    np.put_along_axis(levels, order, 1.0 - survive, axis=1)
    return levels
