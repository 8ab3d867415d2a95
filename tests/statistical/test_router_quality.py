"""Held-out quality of the trained routers on the full shipped data (docs/routers.md).

Measured on seeds 0-4 with a 40% training split: mean model AUC 0.746-0.758, lowest model
AUC 0.688, p_abstain AUC 0.774-0.792, largest ECE 0.064. The bounds leave a margin.
"""

import numpy as np
import pytest

from racer_online.datasets import load_outcomes
from racer_online.routers import held_out_quality, split_rows, train_knn_router, train_text_router

pytestmark = pytest.mark.statistical

TRAINERS = {"text": train_text_router, "knn": train_knn_router}


@pytest.fixture(scope="module")
def outcomes():
    return load_outcomes()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["text", "knn"])
def test_routers_rank_and_calibrate_held_out_queries(outcomes, kind, seed):
    train, test = split_rows(outcomes, train_fraction=0.4, seed=seed)
    router = TRAINERS[kind](outcomes, train_rows=train)
    scores = router.score_texts([outcomes.questions[i] for i in test])
    quality = held_out_quality(scores, outcomes.labels[test])
    model_aucs = [q.auc for q in quality[:-1]]
    assert np.mean(model_aucs) > 0.72
    assert min(model_aucs) > 0.65
    assert quality[-1].auc > 0.74  # p_abstain, "no model is correct"
    assert max(q.ece for q in quality) < 0.09
