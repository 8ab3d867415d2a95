"""Offline evaluation on real outcomes: RACER next to top-1 and all-models routing.

A deliberately simple base router (each model's accuracy on the query's source task,
fitted on a fixed seeded 30% of the rows) scores the other 70%; calibration and test
splits are drawn from those. Used by ``racer-online evaluate`` and the validity tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from racer_online.core import Bound, Miss, Rule, calibrate, entry_levels, members, set_misses
from racer_online.datasets import Outcomes
from racer_online.records import Records


@dataclass(frozen=True)
class TaskAccuracyRouter:
    """Scores = per-task accuracy of each model; ``p_abstain`` = per-task share unanswered."""

    tasks: tuple[str, ...]
    accuracy: NDArray[np.float64]  # (tasks + 1, K); last row: all tasks, for unseen ones
    unanswered: NDArray[np.float64]  # (tasks + 1,)

    @classmethod
    def fit(cls, tasks: NDArray[np.str_], labels: NDArray[np.bool_]) -> TaskAccuracyRouter:
        names = tuple(sorted(set(tasks.tolist())))
        groups = [labels[tasks == t] for t in names] + [labels]
        return cls(
            tasks=names,
            accuracy=np.array([g.mean(axis=0) for g in groups]),
            unanswered=np.array([(~g.any(axis=1)).mean() for g in groups]),
        )

    def score(self, tasks: NDArray[np.str_]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        index = {t: i for i, t in enumerate(self.tasks)}
        rows = np.array([index.get(t, len(self.tasks)) for t in tasks.tolist()])
        return self.accuracy[rows], self.unanswered[rows]


def task_router_records(outcomes: Outcomes, *, fit_fraction: float = 0.3, seed: int = 0) -> Records:
    """Records of the rows not used to fit the task router, scored by it."""
    order = np.random.default_rng(seed).permutation(len(outcomes))
    n_fit = round(fit_fraction * len(outcomes))
    fit, rest = order[:n_fit], np.sort(order[n_fit:])
    router = TaskAccuracyRouter.fit(outcomes.tasks[fit], outcomes.labels[fit])
    scores, p_abstain = router.score(outcomes.tasks[rest])
    return Records(
        query_ids=tuple(str(i) for i in rest),
        models=outcomes.models,
        scores=scores,
        labels=outcomes.labels[rest].astype(np.float64),
        p_abstain=p_abstain,
        costs=np.broadcast_to(outcomes.prices, scores.shape).copy(),
    )


@dataclass(frozen=True)
class SetFigures:
    """What a router's sets did on test queries."""

    risk: float
    mean_set_size: float
    abstain_rate: float
    mean_price: float


def figures(
    chosen: NDArray[np.bool_], labels: NDArray[np.bool_], prices: NDArray[np.float64], miss: Miss
) -> SetFigures:
    k = labels.shape[1]
    sizes = chosen[:, :k].sum(axis=1)
    return SetFigures(
        risk=float(set_misses(chosen, labels, miss=miss).mean()),
        mean_set_size=float(sizes.mean()),
        abstain_rate=float((sizes == 0).mean()),
        mean_price=float((chosen[:, :k] * prices).sum(axis=1).mean()),
    )


@dataclass(frozen=True)
class SplitResult:
    lam_hat: float
    certified: bool
    racer: SetFigures
    top1: SetFigures
    all_models: SetFigures


def random_splits(
    records: Records,
    *,
    alpha: float,
    delta: float,
    bound: Bound = "binomial",
    rule: Rule = "cumulative",
    miss: Miss = "answerable",
    n_calibration: int = 1000,
    splits: int = 100,
    seed: int = 0,
) -> Iterator[SplitResult]:
    """Calibrate on ``n_calibration`` random records, test on the rest, ``splits`` times."""
    labels = records.labels.astype(bool)
    prices = records.costs[0] if records.costs is not None else np.zeros(len(records.models))
    levels = entry_levels(
        records.scores, rule=rule, miss=miss, p_abstain=records.p_abstain, prices=prices
    )
    top1 = np.zeros(levels.shape, dtype=bool)
    top1[np.arange(len(records)), records.scores.argmax(axis=1)] = True
    everything = np.ones(levels.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        order = rng.permutation(len(records))
        cal, test = order[:n_calibration], order[n_calibration:]
        p_abstain = None if records.p_abstain is None else records.p_abstain[cal]
        result = calibrate(
            records.scores[cal],
            labels[cal],
            alpha=alpha,
            delta=delta,
            bound=bound,
            rule=rule,
            miss=miss,
            p_abstain=p_abstain,
            prices=prices,
        )
        yield SplitResult(
            lam_hat=result.lam_hat,
            certified=result.certified,
            racer=figures(members(levels[test], result.lam_hat), labels[test], prices, miss),
            top1=figures(top1[test], labels[test], prices, miss),
            all_models=figures(everything[test], labels[test], prices, miss),
        )


def mean_figures(results: Sequence[SetFigures]) -> SetFigures:
    return SetFigures(
        *(
            float(np.mean(values))
            for values in zip(
                *((r.risk, r.mean_set_size, r.abstain_rate, r.mean_price) for r in results),
                strict=True,
            )
        )
    )
