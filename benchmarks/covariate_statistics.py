"""Which router statistic separates the drift schedule's phases without labels.

The held-out stream of the backtest (the shipped data scored by the demo's text router,
the default three phases), and for each candidate statistic the share of each phase's
queries on its "unsure" side of the knowledge phase's 20% quantile: the covariate channel
of the drift monitor counts exactly that share for the top score (docs/method.md).

    .venv/bin/python -m benchmarks.covariate_statistics
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from racer_online.apps import replay
from racer_online.apps.demo import router_file
from racer_online.datasets import load_outcomes
from racer_online.offline import backtest
from racer_online.routers.files import load_router

TAIL = 0.2


def main() -> None:
    outcomes = load_outcomes(None, correct_at=None, prices_file=None)
    path = router_file(Path("artifacts/demo"))
    models = list(outcomes.models)
    scored = backtest.score_rows(
        outcomes, load_router(path), replay.held_out_rows(outcomes, path), models
    )
    stream = replay.plan(outcomes, None, rows=scored.rows, seed=0)
    at = {int(r): i for i, r in enumerate(scored.rows)}
    order = np.array([at[int(r)] for r in stream.rows])
    scores, given = scored.scores[order], scored.p_abstain[order]
    p_abstain = np.where(np.isnan(given), np.prod(1 - scores, axis=1), given)
    ranked = -np.sort(-scores, axis=1)
    # Each statistic oriented so that low means unsure.
    statistics = {
        "top score (kept)": ranked[:, 0],
        "sum of the scores": scores.sum(axis=1),
        "sum of the top two": ranked[:, 0] + ranked[:, 1],
        "p_abstain, negated": -p_abstain,
        "margin between the top two": ranked[:, 0] - ranked[:, 1],
    }
    names = [phase.name for phase in stream.phases]
    print(f"share of each phase below the {names[0]} phase's {TAIL:.0%} quantile")
    print("| statistic | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for name, values in statistics.items():
        cut = np.quantile(values[stream.phase == 0], TAIL)
        shares = [(values[stream.phase == k] < cut).mean() for k in range(len(names))]
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in shares) + " |")


if __name__ == "__main__":
    main()
