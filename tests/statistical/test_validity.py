"""Validity of the (alpha, delta) guarantee on the shipped real data (docs/method.md 6)."""

import math

import numpy as np
import pytest

from racer_online.datasets import load_outcomes
from racer_online.offline.evaluation import random_splits, task_router_records

pytestmark = pytest.mark.statistical

SPLITS = 200
N_CALIBRATION = 1000


@pytest.fixture(scope="module")
def records():
    return task_router_records(load_outcomes())


@pytest.mark.parametrize(
    ("rule", "miss", "bound", "alpha", "delta"),
    [
        ("cumulative", "answerable", "binomial", 0.1, 0.1),
        ("threshold", "augmented", "binomial", 0.1, 0.1),
        ("cost", "answerable", "hb", 0.05, 0.1),
        ("cumulative", "augmented", "binomial", 0.2, 0.05),
    ],
)
def test_violation_frequency_is_at_most_delta(records, rule, miss, bound, alpha, delta):
    n_test = len(records) - N_CALIBRATION
    margin = 2 * math.sqrt(alpha * (1 - alpha) / n_test)  # test-set noise, not the guarantee
    results = list(
        random_splits(
            records,
            alpha=alpha,
            delta=delta,
            bound=bound,
            rule=rule,
            miss=miss,
            n_calibration=N_CALIBRATION,
            splits=SPLITS,
            seed=11,
        )
    )
    risks = np.array([r.racer.risk for r in results])
    violations = float(np.mean(risks > alpha + margin))
    assert violations <= delta, (
        f"{violations:.3f} of {SPLITS} splits exceed alpha + margin = {alpha + margin:.4f}"
    )
    # Not vacuous: the sets are smaller than all models and the risk is used, not wasted.
    assert np.mean([r.racer.mean_set_size for r in results]) < len(records.models)
    assert risks.mean() > alpha / 2


def test_crc_controls_the_expected_risk(records):
    results = list(
        random_splits(
            records,
            alpha=0.1,
            delta=0.1,
            bound="crc",
            n_calibration=N_CALIBRATION,
            splits=SPLITS,
            seed=5,
        )
    )
    risks = np.array([r.racer.risk for r in results])
    standard_error = risks.std(ddof=1) / math.sqrt(SPLITS)
    assert risks.mean() <= 0.1 + 3 * standard_error
