"""Concentration bounds and the certified miss count ``m*`` (docs/method.md section 4).

Every bound certifies a miss count ``m`` out of ``n`` records when its p-value for
H0: R >= alpha is at most ``delta`` (``crc``: when ``(m + 1) / (n + 1) <= alpha``). All of
them are monotone in ``m``, so ``m*`` is found by bisection over the integers: about
log2(n) tail evaluations, whatever ``n`` is.

References
----------
Bates et al. (2021) RCPS; Angelopoulos et al. (2021) Learn then Test; Angelopoulos et al.
(2022) Conformal risk control; Bentkus (2004).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, get_args

from scipy.special import bdtr, rel_entr

from racer_online.core.scoring import check_choice
from racer_online.errors import InvalidInputError

Bound = Literal["binomial", "hoeffding", "bentkus", "hb", "crc"]
BOUNDS: tuple[str, ...] = get_args(Bound)


def check_level(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise InvalidInputError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def p_value(m: int, n: int, alpha: float, bound: Bound = "binomial") -> float:
    """p-value of observing ``m`` misses in ``n`` records if the true risk were ``alpha``.

    Undefined for ``crc``, which certifies an expectation, not a probability.
    """
    if bound == "crc":
        raise InvalidInputError("the crc bound has no p-value; use certifies()")
    binomial_tail = float(bdtr(m, n, alpha))  # P(Binom(n, alpha) <= m)
    if bound == "binomial":
        return binomial_tail
    if bound == "bentkus":
        return math.e * binomial_tail
    risk = m / n
    if bound == "hoeffding":
        return math.exp(-2.0 * n * max(alpha - risk, 0.0) ** 2)
    if bound == "hb":
        a = min(risk, alpha)
        h1 = float(rel_entr(a, alpha) + rel_entr(1.0 - a, 1.0 - alpha))
        return min(math.exp(-n * h1), math.e * binomial_tail)
    check_choice("bound", bound, BOUNDS)
    raise AssertionError("unreachable")


def certifies(m: int, n: int, alpha: float, delta: float, bound: Bound = "binomial") -> bool:
    """Whether ``m`` misses out of ``n`` still certify risk <= alpha at level ``delta``."""
    if bound == "crc":
        return (m + 1) / (n + 1) <= alpha
    return p_value(m, n, alpha, bound) <= delta


@lru_cache(maxsize=1024)
def certified_miss_count(n: int, alpha: float, delta: float, bound: Bound = "binomial") -> int:
    """``m*``: the largest miss count the bound certifies; -1 when none is.

    Cached: a full sliding window recalibrates with the same ``n`` again and again.
    """
    check_choice("bound", bound, BOUNDS)
    check_level("alpha", alpha)
    check_level("delta", delta)
    if n < 1:
        raise InvalidInputError("the calibration window is empty")
    lo, hi = -1, n + 1  # invariant: certifies(lo) (or lo == -1), not certifies(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if certifies(mid, n, alpha, delta, bound):
            lo = mid
        else:
            hi = mid
    return lo
