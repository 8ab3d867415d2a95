"""Concentration bounds and the certified miss count ``m*`` (docs/method.md sections 1, 6).

Every bound certifies a miss count ``m`` out of ``n`` records when its p-value for
H0: R >= alpha is at most ``delta`` (``crc``: when ``(m + 1) / (n + 1) <= alpha``). All of
them are monotone in ``m``, so ``m*`` is found by bisection over the integers: about
log2(n) tail evaluations, whatever ``n`` is.

``anytime`` is the one whose certificate holds for every ``n`` at once: its p-value is
``1 / E`` of an e-process (`anytime_log_e`) on a segment's cumulative records, so by
Ville's inequality the chance that it *ever* certifies a risk above alpha is at most
delta, however often the leader looks (docs/method.md section 6).

References
----------
Bates et al. (2021) RCPS; Angelopoulos et al. (2021) Learn then Test; Angelopoulos et al.
(2022) Conformal risk control; Bentkus (2004); Ville (1939); Robbins (1970) and Howard et
al. (2021), the method of mixtures; Waudby-Smith and Ramdas (2024), betting.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, get_args

from scipy.special import bdtr, betainc, betaln, rel_entr

from racer_online.core.scoring import check_choice
from racer_online.errors import InvalidInputError

Bound = Literal["anytime", "binomial", "hoeffding", "bentkus", "hb", "crc"]
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
    if bound == "anytime":
        return min(1.0, math.exp(-anytime_log_e(m, n, alpha)))
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


# The mixing law of the anytime e-process: q = alpha * U with U ~ Beta(PRIOR_SHAPE, 1),
# density PRIOR_SHAPE * u^(PRIOR_SHAPE - 1) on [0, 1]: 1 is the uniform law on [0, alpha].
# Measured against 0.5 (more mass near q = 0: a first threshold on 30 records instead of
# 35) and 2 (more near alpha), the uniform law gave the smallest sets on the shipped
# stream, whose segments spend most of their queries at 100 to 300 records
# (docs/results.md).
PRIOR_SHAPE = 1.0


def anytime_log_e(m: int, n: int, alpha: float, shape: float = PRIOR_SHAPE) -> float:
    """log E after ``m`` misses in ``n`` records: the mixture over ``q`` in [0, alpha] of
    the likelihood ratios of Bernoulli(q) against Bernoulli(alpha),

        E = integral of (q / alpha)^m ((1 - q) / (1 - alpha))^(n - m) dpi(q).

    Each ratio is the wealth of a constant bet ``b = (1 - q / alpha) / (1 - alpha)`` on
    ``alpha - loss`` (Waudby-Smith and Ramdas 2024): a nonnegative martingale at risk
    alpha, a supermartingale at any risk above (each factor's mean falls in the risk), so
    the mixture is one too, in whatever order the records come, and it depends on the
    counts alone. With ``pi`` = ``alpha`` Beta(a, 1) it is closed form:
    ``a B(m + a, n - m + 1) I_alpha(m + a, n - m + 1) / (alpha^(m + a) (1 - alpha)^(n - m))``.
    """
    if not 0 <= m <= n:
        raise InvalidInputError(f"a miss count must lie in [0, n], got {m} of {n}")
    a, b = m + shape, n - m + 1.0
    tail = float(betainc(a, b, alpha))
    if tail <= 0.0:
        return -math.inf
    return (
        math.log(shape) + float(betaln(a, b)) + math.log(tail)
        - (m + shape) * math.log(alpha) - (n - m) * math.log1p(-alpha)
    )  # fmt: skip


def certifies(m: int, n: int, alpha: float, delta: float, bound: Bound = "binomial") -> bool:
    """Whether ``m`` misses out of ``n`` still certify risk <= alpha at level ``delta``."""
    if bound == "crc":
        return (m + 1) / (n + 1) <= alpha
    if bound == "anytime":  # Ville: P(sup E >= 1 / delta) <= delta under H0
        return anytime_log_e(m, n, alpha) >= math.log(1.0 / delta)
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
