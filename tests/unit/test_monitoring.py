import numpy as np
import pytest
from scipy.stats import beta

from racer_online.core import (
    aci_level,
    aci_threshold,
    realised_risk,
    threshold_from_required,
)


def test_realised_risk_has_a_clopper_pearson_interval():
    result = realised_risk(np.array([True] * 10 + [False] * 90))
    assert (result.misses, result.n, result.rate) == (10, 100, 0.1)
    # Clopper-Pearson: Beta quantiles of the miss count.
    assert result.low == pytest.approx(beta.ppf(0.025, 10, 91))
    assert result.high == pytest.approx(beta.ppf(0.975, 11, 90))
    assert realised_risk(np.zeros(0, bool)) is None


def test_aci_level_follows_the_update_rule_unclipped():
    misses = np.array([True, True, True, False])
    level = 0.1
    for miss in misses:
        level = level + 0.05 * (0.1 - miss)
    assert aci_level(0.1, misses, alpha=0.1, gamma=0.05) == pytest.approx(level)
    assert aci_level(0.01, np.ones(10, bool), alpha=0.1, gamma=0.05) < 0  # no clip at 0


def test_aci_threshold_bypasses_calibration_outside_the_unit_interval():
    t = np.linspace(0, 1, 500)
    assert aci_threshold(t, alpha_t=-0.2, delta=0.1, bound="binomial").lam_hat == 1.0
    assert aci_threshold(t, alpha_t=1.3, delta=0.1, bound="binomial").lam_hat == 0.0
    inside = aci_threshold(t, alpha_t=0.2, delta=0.1, bound="binomial")
    assert inside == threshold_from_required(t, alpha=0.2, delta=0.1)
