import math

import numpy as np
import pytest
from scipy.stats import binom

from racer_online.core import BOUNDS, certified_miss_count, certifies, p_value
from racer_online.errors import InvalidInputError

# docs/method.md section 4: m* per bound (binomial, bentkus, hb, hoeffding, crc).
REFERENCE = [
    (10, 0.1, 0.1, (-1, -1, -1, -1, 0)),
    (22, 0.1, 0.1, (0, -1, 0, -1, 1)),
    (50, 0.1, 0.1, (1, 1, 1, -1, 4)),
    (100, 0.1, 0.1, (5, 4, 4, -1, 9)),
    (100, 0.05, 0.1, (1, 0, 1, -1, 4)),
    (1000, 0.1, 0.1, (87, 82, 82, 66, 99)),
    (1000, 0.05, 0.05, (38, 35, 35, 11, 49)),
    (10000, 0.02, 0.01, (167, 162, 162, 48, 199)),
    (100000, 0.1, 0.1, (9878, 9830, 9830, 9660, 9999)),
]
TABLE_ORDER = ("binomial", "bentkus", "hb", "hoeffding", "crc")


@pytest.mark.parametrize(("n", "alpha", "delta", "expected"), REFERENCE)
@pytest.mark.parametrize("column", range(5))
def test_m_star_matches_reference_table(n, alpha, delta, expected, column):
    bound = TABLE_ORDER[column]
    assert certified_miss_count(n, alpha, delta, bound) == expected[column]


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize(
    ("n", "alpha", "delta"), [(37, 0.2, 0.05), (500, 0.1, 0.1), (2000, 0.03, 0.2)]
)
def test_m_star_is_the_largest_certified_count(bound, n, alpha, delta):
    m = certified_miss_count(n, alpha, delta, bound)
    assert m == -1 or certifies(m, n, alpha, delta, bound)
    assert not certifies(m + 1, n, alpha, delta, bound)


def test_p_values_follow_their_formulas():
    n, alpha, m = 200, 0.1, 12
    tail = binom.cdf(m, n, alpha)
    assert p_value(m, n, alpha, "binomial") == pytest.approx(tail)
    assert p_value(m, n, alpha, "bentkus") == pytest.approx(math.e * tail)
    assert p_value(m, n, alpha, "hoeffding") == pytest.approx(
        math.exp(-2 * n * (alpha - m / n) ** 2)
    )
    r = m / n
    h1 = r * math.log(r / alpha) + (1 - r) * math.log((1 - r) / (1 - alpha))
    assert p_value(m, n, alpha, "hb") == pytest.approx(min(math.exp(-n * h1), math.e * tail))


def test_hb_treats_zero_log_zero_as_zero():
    assert p_value(0, 50, 0.1, "hb") == pytest.approx(min(0.9**50, math.e * 0.9**50))


@pytest.mark.parametrize("bound", ["anytime", "binomial", "bentkus", "hb", "hoeffding"])
def test_p_value_is_monotone_in_the_miss_count(bound):
    values = [p_value(m, 300, 0.1, bound) for m in range(0, 301, 5)]
    assert np.all(np.diff(values) >= 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 100, "alpha": 0.0, "delta": 0.1}, "alpha must lie strictly between 0 and 1"),
        ({"n": 100, "alpha": 1.0, "delta": 0.1}, "alpha must lie strictly between 0 and 1"),
        ({"n": 100, "alpha": 0.1, "delta": 1.5}, "delta must lie strictly between 0 and 1"),
        ({"n": 100, "alpha": float("nan"), "delta": 0.1}, "alpha must lie"),
        ({"n": 0, "alpha": 0.1, "delta": 0.1}, "the calibration window is empty"),
        ({"n": 10, "alpha": 0.1, "delta": 0.1, "bound": "bogus"}, "unknown bound 'bogus'"),
    ],
)
def test_bad_parameters_raise_precise_errors(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        certified_miss_count(**kwargs)


def test_crc_has_no_p_value():
    with pytest.raises(InvalidInputError, match="crc"):
        p_value(1, 10, 0.1, "crc")
