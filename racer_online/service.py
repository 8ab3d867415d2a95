"""The RACER service: route, record feedback, recalibrate. No Faust in here.

The worker hands it parsed batches and publishes what it returns; the service talks to
the store (Redis, or its in-memory twin) once per batch and keeps each scope's current
threshold in memory, so routing goes on when Redis does not answer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from racer_online import core, metrics
from racer_online.errors import InvalidInputError, StoreUnavailableError
from racer_online.messages import (
    DecisionMessage,
    FeedbackMessage,
    QueryMessage,
    Status,
    ThresholdMessage,
)
from racer_online.settings import ScopeConfig, Settings
from racer_online.store import FeedbackOutcome, LabelWrite, PendingWrite, Store, StoreConfig
from racer_online.window import WindowCache, pack_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejected:
    """A message the service cannot use; it goes to the dead-letter topic with this reason."""

    kind: str  # short and stable, for metrics: unknown_scope, unknown_model, no_scores
    reason: str


def store_config(settings: Settings) -> StoreConfig:
    return StoreConfig(
        catalogues={name: scope.model_names for name, scope in settings.scopes.items()},
        pending_ttl_s=settings.pending_ttl_s,
        window_size=settings.window_size,
    )


def audit_draw(scope: str, query_id: str) -> float:
    """A uniform draw that ignores the query's content and repeats on redelivery."""
    digest = hashlib.blake2b(f"{scope}\0{query_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class ScopeState:
    """One scope's configuration, current threshold and (on the leader) its window."""

    def __init__(self, name: str, config: ScopeConfig) -> None:
        self.name = name
        self.config = config
        self.models = config.model_names
        self.prices = np.array(config.prices)
        self.threshold = ThresholdMessage(
            scope=name, version=0, lam=core.FALLBACK_LAM, status="fallback", certified=False,
            n=0, alpha=config.alpha, delta=config.delta, bound=config.bound, rule=config.rule,
            miss=config.miss, m_star=-1, reason="start",
        )  # fmt: skip
        self.window = WindowCache(len(self.models))
        self.new_records = 0
        self.calibrated_at = -np.inf  # by this process, as leader

    def levels(self, scores: np.ndarray, p_abstain: np.ndarray) -> np.ndarray:
        cfg = self.config
        return core.entry_levels(
            scores, rule=cfg.rule, miss=cfg.miss, p_abstain=p_abstain, prices=self.prices
        )

    def apply(self, threshold: ThresholdMessage) -> None:
        self.threshold = threshold
        metrics.THRESHOLD.labels(self.name).set(threshold.lam)
        metrics.THRESHOLD_VERSION.labels(self.name).set(threshold.version)
        metrics.CERTIFIED.labels(self.name).set(int(threshold.status == "certified"))


class RacerService:
    def __init__(
        self, settings: Settings, store: Store, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.scopes = {name: ScopeState(name, cfg) for name, cfg in settings.scopes.items()}

    # -- routing -------------------------------------------------------------------------

    async def route(self, queries: Sequence[QueryMessage]) -> list[DecisionMessage | Rejected]:
        """Decide every query of a batch; one store round trip for the whole batch."""
        started = time.perf_counter()
        results: list[DecisionMessage | Rejected | None] = [self._reject(q) for q in queries]
        by_scope: dict[str, list[int]] = defaultdict(list)
        for i, (query, result) in enumerate(zip(queries, results, strict=True)):
            if result is None:
                by_scope[query.scope].append(i)
        writes: list[tuple[int, PendingWrite]] = []
        for name, rows in by_scope.items():
            decided = self._decide(self.scopes[name], [queries[i] for i in rows])
            for i, (decision, write) in zip(rows, decided, strict=True):
                results[i] = decision
                writes.append((i, write))
        try:
            stored = await self.store.route([w for _, w in writes])
        except StoreUnavailableError as exc:
            log.warning("routing on the in-memory thresholds: %s", exc)
            for _, w in writes:
                metrics.PENDING_WRITE_FAILURES.labels(w.scope).inc()
        else:
            for (i, _), kept in zip(writes, stored, strict=True):
                if not kept.created:  # a redelivery: publish the first decision again
                    results[i] = DecisionMessage.parse(kept.decision)
        for result in results:
            if isinstance(result, DecisionMessage):
                _count_decision(result)
        metrics.ROUTE_SECONDS.observe(time.perf_counter() - started)
        return [r for r in results if r is not None]

    def _reject(self, query: QueryMessage) -> Rejected | None:
        scope = self.scopes.get(query.scope)
        if scope is None:
            return Rejected("unknown_scope", f"unknown scope {query.scope!r}")
        if query.scores is None:
            return Rejected("no_scores", "the query has no scores and no base router is set")
        unknown = sorted(set(query.scores) - set(scope.models))
        if unknown:
            return Rejected(
                "unknown_model", f"unknown model {unknown[0]!r} in scope {scope.name!r}"
            )
        missing = [m for m in scope.models if m not in query.scores]
        if missing:
            return Rejected("missing_score", f"no score for model {missing[0]!r}")
        return None

    def _decide(
        self, scope: ScopeState, batch: Sequence[QueryMessage]
    ) -> list[tuple[DecisionMessage, PendingWrite]]:
        scores = np.array([[q.scores[m] for m in scope.models] for q in batch])  # type: ignore[index]
        given = np.array([np.nan if q.p_abstain is None else q.p_abstain for q in batch])
        p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
        levels = scope.levels(scores, p_abstain)
        th = scope.threshold
        decisions = core.decide(levels, th.lam, models=scope.models, prices=scope.prices)
        now = self.clock()
        out = []
        for q, d, packed in zip(batch, decisions, pack_scores(scores, p_abstain), strict=True):
            audit = audit_draw(scope.name, q.query_id) < self.settings.audit_rate
            message = DecisionMessage(
                query_id=q.query_id, scope=scope.name, models=list(d.models), abstain=d.abstain,
                flag_unanswerable=d.flag_unanswerable, audit=audit, lam=th.lam,
                threshold_version=th.version, threshold_status=th.status, alpha=th.alpha,
                delta=th.delta, bound=th.bound, scores=q.scores or {}, p_abstain=q.p_abstain,
                decided_at=now,
            )  # fmt: skip
            write = PendingWrite(scope.name, q.query_id, message.to_bytes(), packed, th.lam, audit)
            out.append((message, write))
        return out

    # -- feedback ------------------------------------------------------------------------

    async def record_feedback(
        self, events: Sequence[FeedbackMessage]
    ) -> list[FeedbackOutcome | Rejected]:
        """Merge labels into pending records. Raises `StoreUnavailableError` to be retried."""
        horizon = self.clock() - self.settings.pending_ttl_s
        results: list[FeedbackOutcome | Rejected] = []
        writes: list[tuple[int, LabelWrite]] = []
        for i, event in enumerate(events):
            scope = self.scopes.get(event.scope)
            unknown = sorted(set(event.labels) - set(scope.models)) if scope else []
            if scope is None:
                results.append(Rejected("unknown_scope", f"unknown scope {event.scope!r}"))
            elif unknown:
                results.append(Rejected("unknown_model", f"unknown model {unknown[0]!r}"))
            elif event.event_time is not None and event.event_time < horizon:
                results.append(FeedbackOutcome.LATE)
            else:
                results.append(FeedbackOutcome.DUPLICATE)  # replaced below
                writes.append((i, LabelWrite(event.scope, event.query_id, event.labels)))
        outcomes = await self.store.feedback([w for _, w in writes])
        for (i, _), outcome in zip(writes, outcomes, strict=True):
            results[i] = outcome
        for event, result in zip(events, results, strict=True):
            if isinstance(result, FeedbackOutcome):
                metrics.FEEDBACK.labels(event.scope, result.value).inc()
        return results

    # -- thresholds ----------------------------------------------------------------------

    async def refresh_thresholds(self) -> list[ThresholdMessage]:
        """Apply thresholds that the leader stored since the last look (every worker)."""
        applied = []
        for scope in self.scopes.values():
            raw = await self.store.load_threshold(scope.name)
            if raw is None:
                continue
            stored = ThresholdMessage.parse(raw)
            if stored.version > scope.threshold.version:
                scope.apply(stored)
                applied.append(stored)
        return applied

    def forget_windows(self) -> None:
        """Drop the in-memory windows: the next leader tick re-reads them from the store."""
        for scope in self.scopes.values():
            scope.window = WindowCache(len(scope.models))
            scope.calibrated_at = -np.inf

    async def recalibrate_due(self) -> list[ThresholdMessage]:
        """Leader tick: read new window records; recalibrate scopes that are due."""
        updates = []
        now = self.clock()
        for scope in self.scopes.values():
            trimmed = await self._sync_window(scope, now)
            elapsed = now - scope.calibrated_at >= self.settings.recalibrate_interval_s
            if scope.new_records >= self.settings.recalibrate_every_records:
                reason = "records"
            elif elapsed and (scope.new_records or trimmed or scope.calibrated_at == -np.inf):
                reason = "timer"
            else:
                continue
            update = await self.recalibrate(scope.name, reason=reason, synced=True)
            if update is not None:
                updates.append(update)
        return updates

    async def recalibrate(
        self, scope_name: str, *, reason: str, synced: bool = False
    ) -> ThresholdMessage | None:
        """Compute, store and apply a new threshold; None if a newer one was stored."""
        scope = self.scopes[scope_name]
        now = self.clock()
        if not synced:
            await self._sync_window(scope, now)
        started = time.perf_counter()
        update = self._calibrate(scope, reason=reason, now=now)
        metrics.RECALIBRATION_SECONDS.labels(scope.name).observe(time.perf_counter() - started)
        scope.new_records, scope.calibrated_at = 0, now
        if not await self.store.save_threshold(scope.name, update.version, update.to_bytes()):
            await self.refresh_thresholds()  # another leader got there first
            return None
        scope.apply(update)
        return update

    async def _sync_window(self, scope: ScopeState, now: float) -> int:
        """Read window records entered since the last read; trim by size and age."""
        while True:
            entries = await self.store.read_window(scope.name, after=scope.window.last_id)
            scope.window.append(entries)
            scope.new_records += len(entries)
            if len(entries) < 10_000:
                break
        min_ms = int((now - self.settings.window_max_age_s) * 1000)
        trimmed = scope.window.trim(max_records=self.settings.window_size, min_ms=min_ms)
        if trimmed:
            await self.store.trim_window(scope.name, min_id=f"{min_ms}-0")
        metrics.WINDOW_RECORDS.labels(scope.name).set(len(scope.window))
        return trimmed

    def _calibrate(self, scope: ScopeState, *, reason: str, now: float) -> ThresholdMessage:
        cfg, window, current = scope.config, scope.window, scope.threshold
        k = len(scope.models)
        n = len(window)
        found = None
        if n:
            levels = scope.levels(window.scores[:, :k], window.scores[:, k])
            required = core.required_thresholds(levels, window.labels, miss=cfg.miss)
            if n >= self.settings.min_records:
                found = core.threshold_from_required(
                    required, alpha=cfg.alpha, delta=cfg.delta, bound=cfg.bound
                )
        status: Status
        if found is not None and found.certified:
            status, lam = "certified", found.lam_hat
        elif current.status in ("certified", "stale"):
            status, lam = "stale", current.lam  # keep the last certified threshold
        else:
            status, lam = "fallback", core.FALLBACK_LAM
        stats = {}
        if n:
            chosen = core.set_stats(levels, lam, n_models=k, prices=scope.prices)
            stats = {
                "empirical_risk": float(np.mean(required > lam)),
                "mean_set_size": chosen.mean_set_size,
                "abstain_rate": chosen.abstain_rate,
                "mean_price": chosen.mean_cost,
                "window_start": window.entered_ms[0] / 1000,
                "window_end": window.entered_ms[-1] / 1000,
            }
            metrics.EMPIRICAL_RISK.labels(scope.name).set(stats["empirical_risk"])
        return ThresholdMessage(
            scope=scope.name, version=current.version + 1, lam=lam, status=status,
            certified=status == "certified", n=n, alpha=cfg.alpha, delta=cfg.delta,
            bound=cfg.bound, rule=cfg.rule, miss=cfg.miss,
            m_star=found.m_star if found else -1, reason=reason, computed_at=now, **stats,
        )  # fmt: skip


async def load_current_thresholds(
    settings: Settings, scopes: Sequence[str]
) -> dict[str, ThresholdMessage]:
    """The stored threshold of each scope, or its start state when none is stored yet."""
    from racer_online.store import RedisStore

    unknown = [name for name in scopes if name not in settings.scopes]
    if unknown:
        raise InvalidInputError(f"unknown scope {unknown[0]!r}")
    store = RedisStore.from_url(settings.redis_url, store_config(settings))
    try:
        service = RacerService(settings, store)
        await service.refresh_thresholds()
        return {name: service.scopes[name].threshold for name in scopes}
    finally:
        await store.close()


def _count_decision(decision: DecisionMessage) -> None:
    metrics.DECISIONS.labels(decision.scope).inc()
    metrics.SET_SIZE.labels(decision.scope).observe(len(decision.models))
    if decision.abstain:
        metrics.ABSTENTIONS.labels(decision.scope).inc()
    if decision.audit:
        metrics.AUDITS.labels(decision.scope).inc()
