"""CUSUM channels, the free channel's reference and the leader's policy (pure functions)."""

import math

import numpy as np
import pytest

from racer_online.core import aci_level, drift, policy, threshold_from_required
from racer_online.errors import InvalidInputError


def test_cusum_adds_log_likelihood_ratios_and_floors_at_zero():
    hyp = drift.Hypotheses(0.1, 0.2)
    up, down = math.log(2), math.log(0.8 / 0.9)
    stat, alarm = drift.cusum(0.0, np.array([True, False, False]), hyp, h=10)
    assert stat == pytest.approx(max(0.0, up + 2 * down)) and alarm is None
    stat, _ = drift.cusum(0.0, np.zeros(5, bool), hyp, h=10)
    assert stat == 0.0  # never below zero: a long calm stretch does not bank credit


def test_cusum_reports_the_first_crossing():
    hyp = drift.Hypotheses(0.1, 0.2)
    h = 3 * math.log(2) - 1e-9
    stat, alarm = drift.cusum(0.0, np.array([False, True, True, True, True]), hyp, h=h)
    assert alarm == 3 and stat >= h


def test_batch_cusum_equals_the_sum_when_it_stays_positive():
    hyp = drift.Hypotheses(0.2, 0.3)
    outcomes = np.array([True] * 6 + [False] * 4)
    ordered, _ = drift.cusum(5.0, outcomes, hyp, h=1e9)
    assert drift.cusum_counts(5.0, 6, 10, hyp) == pytest.approx(ordered)
    with pytest.raises(InvalidInputError):
        drift.cusum_counts(0.0, 11, 10, hyp)


def test_threshold_for_splits_the_level_over_channels():
    assert drift.threshold_for(1e-5) == pytest.approx(math.log(1e5))
    assert drift.threshold_for(1e-5, channels=2) == pytest.approx(math.log(2e5))


def test_rate_interval_holds_the_estimate():
    low, high = drift.rate_interval(20, 100, confidence=0.9)
    assert low < 0.2 < high
    assert drift.rate_interval(0, 50, confidence=0.9)[0] == 0.0
    assert drift.rate_interval(50, 50, confidence=0.9)[1] == 1.0


def test_free_reference_is_the_upper_bound_of_every_invoked_model_wrong():
    rng = np.random.default_rng(0)
    levels = rng.uniform(size=(2000, 4))
    labels = rng.uniform(size=(2000, 3)) < 0.5
    rise, jump, fall = policy.free_hypotheses(levels, labels, 0.3, alpha=0.1, confidence=0.9)
    in_sample = (~((levels[:, :3] <= 0.3) & labels).any(axis=1)).mean()
    assert rise is not None and fall is not None
    assert fall.p0 < in_sample < rise.p0
    assert rise.p1 == pytest.approx(rise.p0 + 0.1) and fall.p1 == pytest.approx(fall.p0 - 0.1)
    assert jump is not None and jump.p1 == pytest.approx(rise.p0 + 0.3)


def test_segment_routes_on_every_model_until_it_certifies():
    current = policy.Choice(0.2, "certified", 5, 500)
    few = np.full(10, 0.3)
    assert policy.segment_choice(few, direction="rise", alpha=0.1, delta=0.1,
                                 bound="binomial", current=current).lam == 1.0  # fmt: skip
    many = np.linspace(0, 0.5, 300)
    got = policy.segment_choice(many, direction="rise", alpha=0.1, delta=0.1,
                                bound="binomial", current=current)  # fmt: skip
    assert got.status == "certified" and got.lam < 0.5 and got.n == 300
    assert policy.segment_choice(few, direction="fall", alpha=0.1, delta=0.1,
                                 bound="binomial", current=current) == current  # fmt: skip


def test_confirm_replaces_only_when_the_old_threshold_fails_the_segment():
    t = np.linspace(0, 0.5, 300)
    options = {"alpha": 0.1, "delta": 0.1, "bound": "binomial"}
    assert policy.confirm(t, direction="rise", old_lam=0.2, **options)  # 60% missed
    assert not policy.confirm(t, direction="rise", old_lam=0.49, **options)  # a false alarm
    assert policy.confirm(t, direction="fall", old_lam=0.9, **options)  # smaller sets now
    fitted = threshold_from_required(t, **options).lam_hat
    assert not policy.confirm(t, direction="fall", old_lam=fitted, **options)  # no better
    assert policy.confirm(t, direction="fall", old_lam=0.2, **options)  # turned: it fails


def test_uncertified_aci_falls_back():
    got = policy.window_choice(np.linspace(0, 1, 500), alpha=0.1, delta=0.1, bound="binomial",
                               alpha_t=-0.5, min_records=1, current="certified",
                               current_lam=0.2)  # fmt: skip
    assert (got.status, got.lam) == ("fallback", 1.0)
    plain = policy.window_choice(np.zeros(0), alpha=0.1, delta=0.1, bound="binomial",
                                 alpha_t=None, min_records=1, current="certified",
                                 current_lam=0.2)  # fmt: skip
    assert (plain.status, plain.lam) == ("stale", 0.2)


def test_aci_level_is_clipped_at_one_only():
    """Defect 2: in calm traffic alpha_t no longer winds up without bound."""
    assert aci_level(0.1, np.zeros(5000, bool), alpha=0.1, gamma=0.05) == 1.0
    assert aci_level(0.01, np.ones(10, bool), alpha=0.1, gamma=0.05) < 0  # no clip at 0


def test_covariate_reference_cuts_at_the_lowest_fifth_and_bounds_its_rate():
    tops = np.arange(1, 101) / 100  # 0.01 .. 1.00
    cut, hyp = policy.covariate_reference(tops, confidence=0.9)
    assert cut == pytest.approx(0.20)  # k = floor(0.2 * 101) = 20: the 20th smallest
    assert hyp.p0 == pytest.approx(drift.rate_interval(19, 100, confidence=0.9)[1])
    assert 0.2 < hyp.p0 < 0.3 and hyp.p1 == pytest.approx(2 * hyp.p0)
    assert policy.covariate_reference(tops[:19], confidence=0.9) is None  # too few records


def _beta21_below(cut, levels):
    """P(X < cut) for X ~ Beta(2, 1) (CDF x^2), or for X rounded to ``levels`` steps."""
    if levels is None:
        return cut**2
    edges = np.clip((np.arange(levels + 1) + np.array([[-0.5], [0.5]])) / levels, 0, 1)
    mass = edges[1] ** 2 - edges[0] ** 2  # of each rounded value j / levels
    return float(mass[np.arange(levels + 1) / levels < cut].sum())


@pytest.mark.parametrize("levels", [None, 5])  # continuous scores, and heavy ties
def test_covariate_reference_holds_for_the_traffic_after_the_window(levels):
    """Training-conditional validity: over many windows, the rate of "top score below the
    cut" on fresh traffic exceeds p0 in at most a share 1 - confidence of them."""
    rng = np.random.default_rng(11)
    above = []
    for _ in range(2000):
        tops = rng.beta(2, 1, size=60)
        if levels is not None:
            tops = np.round(tops * levels) / levels
        cut, hyp = policy.covariate_reference(tops, confidence=0.9)
        above.append(_beta21_below(cut, levels) > hyp.p0)
    share = float(np.mean(above))
    assert share <= 0.1 + 3 * math.sqrt(0.09 / 2000)
    if levels is None:
        assert share > 0.05  # nearly tight: the bound is the order statistic's own law
