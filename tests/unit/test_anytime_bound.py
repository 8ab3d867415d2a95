"""The `anytime` bound: a mixture e-process whose certificate holds at every n at once."""

import math

import numpy as np
import pytest
from scipy.integrate import quad

from racer_online.core import certified_miss_count, certifies, p_value, policy
from racer_online.core.bounds import PRIOR_SHAPE, anytime_log_e
from racer_online.core.calibration import threshold_from_required
from racer_online.service import drift as watch
from racer_online.service.scope import Monitor


def direct_e(m, n, alpha, shape):
    """The defining integral, numerically: E = int of LR(q) against alpha Beta(shape, 1)."""

    def integrand(q):
        u = q / alpha
        density = shape * u ** (shape - 1) / alpha
        return density * math.exp(m * math.log(u) + (n - m) * math.log((1 - q) / (1 - alpha)))

    peak = min(max(m / n, 1e-9), alpha) if n else alpha / 2  # where the ratio is largest
    value, _ = quad(integrand, 0.0, alpha, points=[peak], limit=200, epsabs=0, epsrel=1e-10)
    return value


@pytest.mark.parametrize("shape", [PRIOR_SHAPE, 2.0, 0.5])
@pytest.mark.parametrize(
    ("m", "n", "alpha"),
    [(0, 0, 0.1), (0, 40, 0.1), (3, 120, 0.1), (17, 300, 0.1), (2, 10, 0.3), (40, 1000, 0.05)],
)
def test_closed_form_equals_the_integral(m, n, alpha, shape):
    assert math.exp(anytime_log_e(m, n, alpha, shape)) == pytest.approx(
        direct_e(m, n, alpha, shape), rel=1e-7
    )


def test_its_e_value_starts_at_one_and_falls_with_each_miss():
    assert anytime_log_e(0, 0, 0.1) == pytest.approx(0.0, abs=1e-12)
    values = [anytime_log_e(m, 500, 0.1) for m in range(60)]
    assert np.all(np.diff(values) < 0)


def test_it_certifies_later_than_the_per_threshold_binomial():
    # the price of covering every n at once: fewer misses certify at each n
    for n in (60, 120, 300, 1000, 10_000):
        assert (
            -1
            <= certified_miss_count(n, 0.1, 0.1, "anytime")
            < certified_miss_count(n, 0.1, 0.1, "binomial")
        )
    m = certified_miss_count(300, 0.1, 0.1, "anytime")
    assert p_value(m, 300, 0.1, "anytime") <= 0.1 < p_value(m + 1, 300, 0.1, "anytime")
    assert certifies(m, 300, 0.1, 0.1, "anytime")


def ever_certified(bound, *, risk, streams=2000, n=1000, alpha=0.1, delta=0.1, seed=7):
    """Share of i.i.d. loss streams at this risk whose cumulative counts certify risk <=
    alpha at some n, looking after every record."""
    rng = np.random.default_rng(seed)
    misses = np.cumsum(rng.uniform(size=(streams, n)) < risk, axis=1)
    boundary = np.array([certified_miss_count(k, alpha, delta, bound) for k in range(1, n + 1)])
    return float((misses <= boundary).any(axis=1).mean())


def test_under_the_null_it_ever_certifies_at_most_delta_of_the_time():
    # Ville: at risk alpha (the worst case of H0) P(ever) <= delta; measured 0.07
    assert ever_certified("anytime", risk=0.1) <= 0.1
    assert ever_certified("anytime", risk=0.12) <= 0.03
    # the per-threshold binomial, looked at after every record, certifies far more often
    assert ever_certified("binomial", risk=0.1) > 0.3


def test_the_smallest_certified_threshold_is_covered_over_every_n():
    """The selection of lam: the risk is monotone in lam, so one e-process, at the largest
    lam whose risk exceeds alpha, covers every threshold the bound picks (docs/method.md)."""
    rng = np.random.default_rng(3)
    alpha, delta, streams, n = 0.1, 0.1, 200, 800
    looks = np.unique(np.geomspace(20, n, 30).astype(int))
    over = 0
    for _ in range(streams):
        # R(lam) = 0.3 (1 - lam): the risk exceeds alpha below lam = 2/3
        t = np.where(rng.uniform(size=n) < 0.3, rng.uniform(size=n), 0.0)
        lams = [
            threshold_from_required(t[:k], alpha=alpha, delta=delta, bound="anytime").lam_hat
            for k in looks
        ]
        over += any(0.3 * (1 - lam) > alpha for lam in lams)
    assert over / streams <= delta


def test_a_trim_freezes_a_certified_segment_and_restarts_one_that_never_certified():
    after = policy.anytime_from_after_trim
    assert after(certified=True, segment_from=None, now=50.0) == math.inf
    assert after(certified=False, segment_from=None, now=50.0) == 50.0  # records from now on
    # an open alarm's segment: the window's e-process becomes the segment's own
    assert after(certified=True, segment_from=42.0, now=50.0) == 42.0


def test_a_frozen_threshold_survives_a_new_leader():
    mon = Monitor(anytime_from=math.inf)
    resumed = Monitor()
    watch.load_state(resumed, watch.saved_state(mon), alpha=0.1, aci=False)
    assert resumed.anytime_from == math.inf
