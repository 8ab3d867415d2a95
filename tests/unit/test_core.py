import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from racer_online.core import (
    BOUNDS,
    MISSES,
    RULES,
    calibrate,
    entry_levels,
    members,
    oracle_threshold,
    required_thresholds,
    route,
    set_misses,
    threshold_from_required,
)
from racer_online.errors import InvalidInputError

# Scores on a coarse grid so that ties (equal scores, equal prices) are common.
coarse = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])


@st.composite
def windows(draw, max_n=40, max_k=5):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    scores = draw(arrays(np.float64, (n, k), elements=coarse))
    labels = draw(arrays(np.bool_, (n, k)))
    p_abstain = draw(st.none() | arrays(np.float64, (n,), elements=coarse))
    prices = draw(arrays(np.float64, (k,), elements=st.sampled_from([0.1, 0.2, 0.9])))
    return scores, labels, p_abstain, prices


@settings(max_examples=150, deadline=None)
@given(windows(), st.sampled_from(RULES), st.sampled_from(MISSES), st.floats(0, 1))
def test_sets_and_losses_agree_and_sets_are_nested(window, rule, miss, lam):
    scores, labels, p_abstain, prices = window
    kw = {"rule": rule, "miss": miss, "p_abstain": p_abstain, "prices": prices}
    levels = entry_levels(scores, **kw)
    t = required_thresholds(levels, labels, miss=miss)
    models = [f"m{j}" for j in range(scores.shape[1])]
    decisions = route(scores, lam, models=models, **kw)
    # Misses counted from the routed sets themselves, as a user would count them.
    k = len(models)
    routed = np.zeros((len(scores), levels.shape[1]), dtype=bool)
    for row, d in enumerate(decisions):
        routed[row, [models.index(m) for m in d.models]] = True
        if levels.shape[1] > k:
            routed[row, k] = d.flag_unanswerable
    np.testing.assert_array_equal(set_misses(routed, labels, miss=miss), lam < t)
    for smaller in (0.0, lam / 2, lam):
        assert np.all(members(levels, smaller) <= members(levels, lam))


@settings(max_examples=100, deadline=None)
@given(windows(), st.sampled_from(RULES), st.sampled_from(MISSES), st.floats(0, 1))
def test_decisions_are_ordered_by_entry_level(window, rule, miss, lam):
    scores, _, p_abstain, prices = window
    kw = {"rule": rule, "miss": miss, "p_abstain": p_abstain, "prices": prices}
    levels = entry_levels(scores, **kw)
    models = [f"m{j}" for j in range(scores.shape[1])]
    for row, d in enumerate(route(scores, lam, models=models, **kw)):
        picked = [models.index(m) for m in d.models]
        inside = [j for j in range(len(models)) if levels[row, j] <= lam]
        assert sorted(inside, key=lambda j: (levels[row, j], j)) == picked
        assert d.abstain == (not d.models)
        assert d.price == pytest.approx(prices[picked].sum())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.2, 0.5, 0.7, 1.0]), min_size=1, max_size=300),
    st.sampled_from(BOUNDS),
    st.sampled_from([0.05, 0.1, 0.3]),
    st.sampled_from([0.05, 0.1, 0.5]),
)
def test_fast_path_equals_the_exact_oracle(t, bound, alpha, delta):
    fast = threshold_from_required(np.array(t), alpha=alpha, delta=delta, bound=bound)
    assert fast.lam_hat == oracle_threshold(np.array(t), alpha=alpha, delta=delta, bound=bound)
    assert fast.certified == (fast.m_star >= 0)
    if fast.certified:
        assert np.count_nonzero(np.array(t) > fast.lam_hat) <= fast.m_star


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=20, max_size=400), st.sampled_from(BOUNDS))
def test_larger_alpha_never_gives_a_larger_threshold(t, bound):
    lams = [
        threshold_from_required(np.array(t), alpha=a, delta=0.1, bound=bound).lam_hat
        for a in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
    ]
    assert all(b <= a for a, b in itertools.pairwise(lams))


def test_entry_levels_follow_the_method_page():
    scores = np.array([[0.6, 0.2, 0.2]])
    np.testing.assert_allclose(entry_levels(scores, rule="threshold"), [[0.4, 0.8, 0.8]])
    # cumulative: mass strictly before, ties in catalogue order.
    np.testing.assert_allclose(entry_levels(scores), [[0.0, 0.6, 0.8]])
    # cost: cheapest first (m1, m2 tie at 0.1 -> catalogue order), then m0.
    levels = entry_levels(scores, rule="cost", prices=np.array([0.9, 0.1, 0.1]))
    np.testing.assert_allclose(levels, [[1 - 0.8 * 0.8, 0.0, 0.2]])
    # augmented with the product p_abstain = 0.4 * 0.8 * 0.8.
    aug = entry_levels(scores, rule="threshold", miss="augmented")
    np.testing.assert_allclose(aug, [[0.4, 0.8, 0.8, 1 - 0.256]])


def test_all_zero_scores_count_as_equal():
    np.testing.assert_allclose(entry_levels(np.zeros((1, 4))), [[0.0, 0.25, 0.5, 0.75]])


def test_records_with_no_correct_model():
    levels = entry_levels(
        np.array([[0.9, 0.1]]), rule="threshold", miss="augmented", p_abstain=np.array([0.3])
    )
    assert required_thresholds(levels, np.array([[0, 0]]), miss="augmented")[0] == pytest.approx(
        0.7
    )
    levels = entry_levels(np.array([[0.9, 0.1]]))
    assert required_thresholds(levels, np.array([[0, 0]]))[0] == 0.0


def test_fallback_when_nothing_is_certified():
    result = calibrate(np.full((10, 2), 0.5), np.ones((10, 2), dtype=int), alpha=0.1, delta=0.1)
    assert (result.lam_hat, result.m_star, result.certified, result.fallback) == (
        1.0,
        -1,
        False,
        True,
    )
    assert result.mean_set_size == 2


def test_calibrate_reports_its_own_window():
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(500, 4))
    labels = rng.uniform(size=(500, 4)) < scores
    prices = np.array([0.1, 0.2, 0.3, 0.4])
    result = calibrate(scores, labels, alpha=0.1, delta=0.1, prices=prices)
    levels = entry_levels(scores)
    t = required_thresholds(levels, labels)
    chosen = members(levels, result.lam_hat)
    assert result.empirical_risk == pytest.approx(np.mean(t > result.lam_hat))
    assert result.empirical_risk <= result.m_star / result.n
    assert result.mean_set_size == pytest.approx(chosen.sum(axis=1).mean())
    assert result.mean_cost == pytest.approx((chosen * prices).sum(axis=1).mean())


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "message"),
    [
        ([[0.5, np.nan]], [[1, 0]], {}, "scores contain NaN"),
        ([[0.5, 1.2]], [[1, 0]], {}, r"scores must lie in \[0, 1\]"),
        ([[0.5, -0.1]], [[1, 0]], {}, r"scores must lie in \[0, 1\]"),
        ([0.5, 0.5], [[1, 0]], {}, r"scores must have shape \(n, K\)"),
        ([[0.5, 0.5]], [[1, 0, 1]], {}, r"labels must have shape \(1, 2\)"),
        ([[0.5, 0.5]], [[1, 2]], {}, "labels must be 0 or 1"),
        ([[0.5, 0.5]], [[1, 0]], {"alpha": 1.0}, "alpha must lie strictly between 0 and 1"),
        ([[0.5, 0.5]], [[1, 0]], {"delta": 0.0}, "delta must lie strictly between 0 and 1"),
        ([[0.5, 0.5]], [[1, 0]], {"rule": "greedy"}, "unknown rule 'greedy'"),
        ([[0.5, 0.5]], [[1, 0]], {"miss": "strict"}, "unknown miss definition 'strict'"),
        ([[0.5, 0.5]], [[1, 0]], {"bound": "chernoff"}, "unknown bound 'chernoff'"),
        ([[0.5, 0.5]], [[1, 0]], {"rule": "cost"}, "the cost rule needs model prices"),
        ([[0.5, 0.5]], [[1, 0]], {"p_abstain": np.array([0.1, 0.2])}, r"p_abstain must have shape"),
        (np.zeros((0, 2)), np.zeros((0, 2)), {}, "the calibration window is empty"),
    ],
)
def test_bad_input_raises_a_precise_error(scores, labels, kwargs, message):
    args = {"alpha": 0.1, "delta": 0.1} | kwargs
    with pytest.raises(InvalidInputError, match=message):
        calibrate(np.asarray(scores, dtype=float), np.asarray(labels), **args)
