"""The leader's policy as pure functions: which threshold to route on, and how to watch it.

The online loop is: route on the window's certified threshold; watch two channels for a
rise of the risk and one for a fall (`free_hypotheses`, and a CUSUM on exact audited
outcomes); on an alarm at time tau, start a *segment* of the decisions made at or after
tau. After a rise, route at ``lam = 1`` (every model) until the segment certifies, then
on the segment's own threshold; after a fall, keep the current threshold. The segment is
drawn at audit rate 1 until it holds ``confirm_records`` (a new scope's first segment:
``warmup_records``); then `confirm` decides whether the window is replaced by the segment
(the traffic changed) or the segment is merged back (a false alarm). Only thresholds
certified on i.i.d. admitted records carry the (alpha, delta) guarantee; the channels are
triggers (docs/method.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from racer_online.core.bounds import Bound, certifies
from racer_online.core.calibration import FALLBACK_LAM, threshold_from_required
from racer_online.core.drift import RATE_FLOOR, Hypotheses, clip_rate, rate_interval
from racer_online.core.monitoring import aci_threshold
from racer_online.core.routing import members

Status = Literal["certified", "stale", "fallback"]
JUMP = 3.0  # the free channel's second rise detector: a shift of 3 alpha
COVARIATE_TAIL = 0.2  # the covariate channel counts top scores in the window's lowest 20%
COVARIATE_SHIFT = 2.0  # ... against twice that rate
COVARIATE_MIN_RECORDS = 20
Direction = Literal["rise", "fall"]


@dataclass(frozen=True)
class Choice:
    """The threshold to route on."""

    lam: float
    status: Status
    m_star: int  # -1: nothing certified
    n: int  # records it was certified on


def window_choice(
    required: NDArray[np.floating], *, alpha: float, delta: float, bound: Bound,
    alpha_t: float | None, min_records: int, current: Status, current_lam: float,
) -> Choice:  # fmt: skip
    """The window's threshold. Not certified: keep the last certified one as ``stale``,
    except under ACI, whose long-run bound needs ``lam = 1`` whenever it asks for it."""
    n = int(required.size)
    found = None
    if n >= min_records:
        if alpha_t is not None:
            found = aci_threshold(required, alpha_t=alpha_t, delta=delta, bound=bound)
        else:
            found = threshold_from_required(required, alpha=alpha, delta=delta, bound=bound)
    if found is not None and found.certified:
        return Choice(found.lam_hat, "certified", found.m_star, n)
    m_star = found.m_star if found else -1
    if current in ("certified", "stale") and alpha_t is None:
        return Choice(current_lam, "stale", m_star, n)
    return Choice(FALLBACK_LAM, "fallback", m_star, n)


def anytime_from_after_trim(*, certified: bool, segment_from: float | None, now: float) -> float:
    """Where the `anytime` e-process restarts once a trim took records it counted.

    Its records must be the segment's cumulative ones, so it cannot go on without them:
    while an alarm's segment is open, the window's records become those of the segment (a
    merge-back then continues the segment's own e-process on the same records); otherwise
    a certified threshold is frozen (``inf``) until the next alarm; a segment that never
    certified published only ``lam = 1`` and starts again on the records decided from
    ``now`` on, records no test has seen."""
    if segment_from is not None:
        return segment_from
    return math.inf if certified else now


def segment_choice(
    required: NDArray[np.floating], *, direction: Direction, alpha: float, delta: float,
    bound: Bound, current: Choice,
) -> Choice:  # fmt: skip
    """While a segment grows: after a rise, ``lam = 1`` until the segment certifies, then
    the segment's threshold; after a fall, the current threshold (it was safe)."""
    if direction == "fall":
        return current
    if not required.size:
        return Choice(FALLBACK_LAM, "fallback", -1, 0)
    found = threshold_from_required(required, alpha=alpha, delta=delta, bound=bound)
    if found.certified:
        return Choice(found.lam_hat, "certified", found.m_star, int(required.size))
    return Choice(FALLBACK_LAM, "fallback", -1, int(required.size))


def confirm(
    required: NDArray[np.floating], *, direction: Direction, old_lam: float, alpha: float,
    delta: float, bound: Bound,
) -> bool:  # fmt: skip
    """True: replace the window by the segment. Whenever the old threshold is not
    certified on the segment (after a rise: the alarm was right; after a fall: the traffic
    turned again while the segment filled); after a fall, also when the segment certifies
    a smaller threshold than the old one. Otherwise the alarm was false: merge back.

    A decision rule, not a certificate: under `anytime` it tests with `binomial`, since an
    e-process certifies nothing on a 30-record segment (whichever way it goes, the
    e-process of the window that stays runs on on its cumulative records)."""
    bound = "binomial" if bound == "anytime" else bound
    t = np.asarray(required, dtype=np.float64)
    if not certifies(int(np.count_nonzero(t > old_lam)), t.size, alpha, delta, bound):
        return True
    if direction == "rise":
        return False
    found = threshold_from_required(t, alpha=alpha, delta=delta, bound=bound)
    return found.certified and found.lam_hat < old_lam


def free_hypotheses(
    levels: NDArray[np.float64], labels: NDArray[np.bool_], lam: float, *, alpha: float,
    confidence: float,
    jump: float = JUMP,
) -> tuple[Hypotheses | None, Hypotheses | None, Hypotheses | None]:  # fmt: skip
    """The free channel's reference: how often every invoked model is wrong at ``lam``, on
    the window. Rise: its upper confidence bound against ``+ alpha`` (the in-sample rate is
    biased low, lam was chosen on it), and against ``+ jump * alpha``, which catches a
    large shift sooner; fall: its lower bound against ``- alpha``."""
    k = labels.shape[1]
    if not labels.shape[0]:
        return None, None, None
    all_wrong = ~(members(levels[:, :k], lam) & labels).any(axis=1)
    low, high = rate_interval(int(all_wrong.sum()), all_wrong.size, confidence=confidence)
    rise = large = fall = None
    if high + alpha <= 1 - RATE_FLOOR:
        rise = Hypotheses(clip_rate(high), clip_rate(high + alpha))
    if high + jump * alpha <= 1 - RATE_FLOOR:
        large = Hypotheses(clip_rate(high), clip_rate(high + jump * alpha))
    if low - alpha >= RATE_FLOOR:
        fall = Hypotheses(clip_rate(low), clip_rate(low - alpha))
    return rise, large, fall


def labelled_hypotheses(alpha: float) -> Hypotheses:
    """Exact audited outcomes: a miss rate of alpha against 2 alpha."""
    return Hypotheses(clip_rate(alpha), clip_rate(min(2 * alpha, 1 - RATE_FLOOR)))


def covariate_reference(
    top_scores: NDArray[np.float64], *, confidence: float, tail: float = COVARIATE_TAIL,
    shift: float = COVARIATE_SHIFT, min_records: int = COVARIATE_MIN_RECORDS,
) -> tuple[float, Hypotheses] | None:  # fmt: skip
    """The covariate channel's reference, on the window's top scores (label-free).

    The cut is the window's order statistic below which a share ``tail`` of its records
    lie; a new query counts when its top score is below the cut. With ``k`` records at or
    below the cut, the rate of that event on exchangeable traffic is at most ``U_(k)`` of
    ``n`` uniforms, a Beta(k, n - k + 1) variable (training-conditional validity of a
    conformal quantile, Vovk 2013; ties only lower the rate): its ``confidence`` quantile,
    the Clopper-Pearson bound of ``k - 1`` in ``n``, is ``p0``, tested against ``shift``
    times it. None while the window is too small to say anything useful."""
    tops = np.sort(np.asarray(top_scores, dtype=np.float64))
    n = tops.size
    if n < min_records:
        return None
    k = max(1, int(np.floor(tail * (n + 1))))
    _, high = rate_interval(k - 1, n, confidence=confidence)
    p0 = clip_rate(high)
    p1 = clip_rate(min(shift * p0, (1 + p0) / 2))
    if p1 <= p0:
        return None
    return float(tops[k - 1]), Hypotheses(p0, p1)
