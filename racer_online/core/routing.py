"""Routing decisions: turn entry levels and a threshold into model sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from racer_online.core.scoring import FloatArray, Miss, Rule, entry_levels
from racer_online.errors import InvalidInputError


class Decision(NamedTuple):
    """The set for one query: models most promising first; empty means abstain. (One per
    routed query: a NamedTuple costs a third of a frozen dataclass to build.)"""

    models: tuple[str, ...]
    indices: tuple[int, ...]  # of the models in the catalogue, in the same order
    flag_unanswerable: bool
    price: float

    @property
    def abstain(self) -> bool:
        return not self.models


@dataclass(frozen=True)
class SetStats:
    mean_set_size: float
    abstain_rate: float
    mean_cost: float | None


def members(levels: FloatArray, lam: float) -> NDArray[np.bool_]:
    """Membership mask ``e_j <= lam`` of shape (n, options)."""
    return levels <= lam


def set_stats(
    levels: FloatArray, lam: float, *, n_models: int, prices: NDArray[np.floating] | None
) -> SetStats:
    """Mean set size (models only, ⊥ is not a model), abstention rate and mean set price."""
    chosen = members(levels[:, :n_models], lam)
    sizes = chosen.sum(axis=1)
    cost = None
    if prices is not None:
        cost = float((chosen * np.broadcast_to(prices, chosen.shape)).sum(axis=1).mean())
    return SetStats(float(sizes.mean()), float((sizes == 0).mean()), cost)


@dataclass(frozen=True)
class ModelStats:
    """Per model, over the queries: how often it is in the set, and its share of the price
    of all sets (zeros when nothing is spent). Descriptive figures, not certified."""

    in_set_rate: NDArray[np.float64]  # (K,)
    price_share: NDArray[np.float64]  # (K,), sums to 1 unless nothing is spent


def model_stats(levels: FloatArray, lam: float, *, prices: NDArray[np.floating]) -> ModelStats:
    """`ModelStats` of sets at ``lam``; ``levels`` (n, K or K + 1 with ⊥ last), ``prices`` (K,)."""
    k = len(prices)
    chosen = members(levels[:, :k], lam)
    spent = chosen.sum(axis=0) * np.asarray(prices, dtype=np.float64)
    total = float(spent.sum())
    share = spent / total if total > 0 else np.zeros(k)
    rate = chosen.mean(axis=0) if len(chosen) else np.zeros(k)
    return ModelStats(np.asarray(rate, dtype=np.float64), share)


def route(
    scores: NDArray[np.floating],
    lam: float,
    *,
    models: Sequence[str],
    rule: Rule = "cumulative",
    miss: Miss = "answerable",
    p_abstain: NDArray[np.floating] | None = None,
    prices: NDArray[np.floating] | None = None,
) -> list[Decision]:
    """Decide the set of every query of a batch at threshold ``lam``."""
    if len(models) != np.shape(scores)[-1]:
        raise InvalidInputError(
            f"{len(models)} model names for {np.shape(scores)[-1]} score columns"
        )
    levels = entry_levels(scores, rule=rule, miss=miss, p_abstain=p_abstain, prices=prices)
    return decide(levels, lam, models=models, prices=prices)


def decide(
    levels: FloatArray,
    lam: float,
    *,
    models: Sequence[str],
    prices: NDArray[np.floating] | None = None,
) -> list[Decision]:
    """Decisions from precomputed entry levels (the worker computes them once per batch)."""
    k = len(models)
    chosen = members(levels, lam)
    # The sets are nested: the models in a set are those whose entry level is at most lam,
    # so ranked by entry level (ties in catalogue order) they are a prefix of the ranking.
    ranking = np.argsort(levels[:, :k], axis=1, kind="stable").tolist()
    sizes = chosen[:, :k].sum(axis=1).tolist()
    flags = chosen[:, k].tolist() if levels.shape[1] > k else [False] * len(ranking)
    costs = (chosen[:, :k] @ (np.zeros(k) if prices is None else prices)).tolist()
    decisions = []
    for rank, size, flag, cost in zip(ranking, sizes, flags, costs, strict=True):
        indices = tuple(rank[:size])
        decisions.append(Decision(tuple(map(models.__getitem__, indices)), indices, flag, cost))
    return decisions


def set_misses(
    chosen: NDArray[np.bool_], labels: NDArray[np.bool_], *, miss: Miss = "answerable"
) -> NDArray[np.bool_]:
    """Misroutes counted directly from sets: no acceptable option in the set.

    ``chosen`` is a membership mask over the options, shape (n, K) or (n, K + 1) with ``⊥``
    last; it may come from any router, not only from RACER.
    """
    k = labels.shape[1]
    hit = (chosen[:, :k] & labels).any(axis=1)
    answerable = labels.any(axis=1)
    if miss == "answerable":
        return np.asarray(answerable & ~hit)
    flagged = chosen[:, k] if chosen.shape[1] > k else np.zeros(len(labels), dtype=bool)
    return np.where(answerable, ~hit, ~flagged)
