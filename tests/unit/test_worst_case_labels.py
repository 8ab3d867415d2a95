"""Labels never given: the window takes the largest required threshold they allow."""

import itertools

import numpy as np

from racer_online import core
from racer_online.service.scope import worst_case


def test_worst_case_is_the_largest_required_threshold_over_every_completion():
    rng = np.random.default_rng(0)
    for miss in ("answerable", "augmented"):
        for _ in range(200):
            levels = rng.uniform(size=(1, 4))  # three models, then the abstention option
            known = rng.uniform(size=(1, 3)) < 0.5
            unknown = rng.uniform(size=(1, 3)) < 0.5
            labels = known & ~unknown
            k = 3 + (miss == "augmented")
            required = core.required_thresholds(levels[:, :k], labels, miss=miss)
            got = worst_case(required, levels[:, :3], labels, unknown)
            completions = []
            for fill in itertools.product((False, True), repeat=int(unknown.sum())):
                y = labels.copy()
                y[unknown] = fill
                completions.append(core.required_thresholds(levels[:, :k], y, miss=miss)[0])
            assert got[0] == max(completions)


def test_records_with_every_label_known_are_left_alone():
    required = np.array([0.2, 0.0])
    levels = np.array([[0.0, 0.5, 0.8], [0.0, 0.5, 0.8]])
    labels = np.array([[False, True, False], [False, False, False]])
    unknown = np.zeros((2, 3), dtype=bool)
    assert worst_case(required, levels, labels, unknown) is required
