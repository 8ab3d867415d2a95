"""One scope's live state: configuration, current threshold, window and drift monitor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from racer_online import core
from racer_online.messages import ThresholdMessage
from racer_online.scopes import ScopeConfig
from racer_online.service import metrics
from racer_online.service.identity import ScopeIdentity
from racer_online.service.window import WindowCache


@dataclass
class Monitor:
    """What the leader watches: exact outcomes of audited decisions in entry order, the
    drift channels' statistics and the segment started by the last alarm."""

    recent: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    last_id: str | None = None  # the last window record whose outcome was applied
    alpha_t: float | None = None  # ACI working level
    after_drift: bool = False  # fallback, not stale, until a window certifies again
    loaded: bool = False  # state read back from the store (a new leader resumes it)
    last_certified_at: float | None = None
    stale_alerted_at: float = -np.inf
    labelled: float = 0.0  # CUSUM of exact audited outcomes, alpha against 2 alpha
    free_rise: float = 0.0  # CUSUMs of "every invoked model wrong": up, up a lot, down
    free_jump: float = 0.0
    free_fall: float = 0.0
    free_seen: tuple[int, int] | None = None  # the store's counters at the last look
    covariate: float = 0.0  # CUSUM of "top score below the cut", label-free
    covariate_cut: float | None = None  # published with the threshold; None: not watched
    covariate_p0: float = 0.0  # the reference of that cut, set with it
    covariate_p1: float = 0.0
    covariate_seen: tuple[int, int] | None = None  # the store's covariate counters
    window_from: float = 0.0  # records decided before this are not read into the window
    # The `anytime` bound's e-process counts the window's records decided at or after this:
    # the segment's cumulative records. inf: a trim took some of them, the threshold is
    # frozen until the next alarm (docs/method.md section 6).
    anytime_from: float = 0.0
    segment_from: float | None = None  # an alarm's time: the segment is decided after it
    segment_direction: str = "rise"
    old_lam: float = 1.0  # the threshold routed on when the alarm came
    identity: dict[str, str] = field(default_factory=dict)  # the window's, as stored


class ScopeState:
    def __init__(self, name: str, config: ScopeConfig, identity: ScopeIdentity) -> None:
        self.name = name
        self.config = config
        self.identity = identity
        self.models = config.model_names
        self.model_set = frozenset(self.models)
        self.prices = np.array(config.prices)
        self.incarnation = 0  # of the Redis state this memory comes from; 0: not looked yet
        self.threshold = self.fallback("start")
        # The newest stored version seen, applied or not: a threshold of another identity
        # or other settings is never routed on, and the leader's next one comes after it.
        self.seen_version = 0
        self.recalibrate_now: str | None = None  # a refused threshold: the leader's reason
        self.window = WindowCache(len(self.models))
        self.monitor = Monitor()
        self.new_records = 0
        self.calibrated_at = -np.inf  # by this process, as leader

    def fallback(self, reason: str) -> ThresholdMessage:
        """lam = 1 (every model) under this scope's identity and settings, version 0 of the
        current incarnation, never stored: until a threshold certifies."""
        cfg = self.config
        return ThresholdMessage(
            scope=self.name, version=0, lam=core.FALLBACK_LAM, status="fallback",
            certified=False, n=0, alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound,
            rule=cfg.rule, miss=cfg.miss, m_star=-1, reason=reason,
            scope_id=self.identity.fingerprint, incarnation=self.incarnation,
        )  # fmt: skip

    def levels(
        self, scores: NDArray[np.float64], p_abstain: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        cfg = self.config
        return core.entry_levels(
            scores, rule=cfg.rule, miss=cfg.miss, p_abstain=p_abstain, prices=self.prices
        )

    def window_levels(
        self, start: int | NDArray[np.bool_] = 0
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Entry levels and required thresholds of window records from ``start`` on (or of
        those a mask selects)."""
        k = len(self.models)
        rows = slice(start, None) if isinstance(start, int) else start
        scores, labels = self.window.scores[rows], self.window.labels[rows]
        levels = self.levels(scores[:, :k], scores[:, k])
        required = core.required_thresholds(levels, labels, miss=self.config.miss)
        return levels, worst_case(required, levels[:, :k], labels, self.window.unknown[rows])

    def model_figures(self, levels: NDArray[np.float64], lam: float) -> dict[str, dict[str, float]]:
        """How often each model is in the window's sets at ``lam``, and its price share."""
        stats = core.model_stats(levels, lam, prices=self.prices)
        return {
            m: {"in_set_rate": float(rate), "price_share": float(share)}
            for m, rate, share in zip(
                self.models, stats.in_set_rate, stats.price_share, strict=True
            )
        }

    def reset(self, incarnation: int) -> None:
        """Redis lost the scope's state: route at lam = 1 from now on, until a threshold of
        the state it holds now certifies, and let the leader read that state afresh."""
        self.incarnation = incarnation
        self.seen_version = 0  # versions count from 1 again in a new incarnation
        self.apply(self.fallback("state_lost"))
        self.forget_window()
        self.new_records = 0

    def apply(self, threshold: ThresholdMessage) -> None:
        self.threshold = threshold
        self.seen_version = max(self.seen_version, threshold.version)
        metrics.THRESHOLD.labels(self.name).set(threshold.lam)
        metrics.THRESHOLD_VERSION.labels(self.name).set(threshold.version)
        metrics.CERTIFIED.labels(self.name).set(int(threshold.status == "certified"))

    def forget_window(self) -> None:
        """Re-read the window from the store at the next leader tick."""
        self.window = WindowCache(len(self.models))
        self.monitor = Monitor()
        self.calibrated_at = -np.inf


def worst_case(
    required: NDArray[np.float64],
    levels: NDArray[np.float64],
    labels: NDArray[np.bool_],
    unknown: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """The largest required threshold that the labels never given allow (docs/method.md).

    ``required`` treats an unknown label as wrong, which is already the worst case when a
    known label is right (t is a minimum over the right models). With none known right,
    one unknown model could be the only right one: t is then at least its entry level.
    """
    open_ = unknown.any(axis=1) & ~labels.any(axis=1)
    if not open_.any():
        return required
    highest_unknown = np.where(unknown, levels, -np.inf).max(axis=1)
    return np.where(open_, np.maximum(required, highest_unknown), required)
