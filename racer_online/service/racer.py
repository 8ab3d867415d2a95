"""The RACER service: route, record feedback, recalibrate. No Faust in here.

The worker hands it parsed batches and publishes what it returns; the service talks to
the store (Redis, or its in-memory twin) once per batch and keeps each scope's current
threshold in memory. A decision is returned only once Redis holds it: while Redis does
not answer, `route` raises and the worker retries the batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np

from racer_online import core
from racer_online.errors import InvalidInputError, StateLostError
from racer_online.messages import (
    AlertMessage,
    DecisionFields,
    FeedbackMessage,
    QueryMessage,
    ThresholdMessage,
)
from racer_online.messages.fields import Status
from racer_online.routers.base import Router
from racer_online.service import identity, metrics
from racer_online.service.decisions import Rejected, Routed, audit_draw, audit_rate
from racer_online.service.leader import Leader
from racer_online.service.scope import ScopeState
from racer_online.service.window import pack_scores, quantise
from racer_online.settings import Settings
from racer_online.store import FeedbackOutcome, LabelWrite, PendingWrite, Store, StoreConfig
from racer_online.store.records import PendingRecord, content_hash, covariate_flags, status_flags

log = logging.getLogger(__name__)
T = TypeVar("T")


def store_config(settings: Settings) -> StoreConfig:
    return StoreConfig(
        catalogues={name: scope.model_names for name, scope in settings.scopes.items()},
        pending_ttl_s=settings.pending_ttl_s,
        # One-hour slots, or the horizon's length when it is shorter, so that a record
        # expires within two slots of its horizon (docs/reliability.md, redelivery).
        slot_s=min(3600.0, settings.pending_ttl_s),
        window_size=settings.window_size,
        min_buckets=settings.pending_min_buckets,
        held_ttl_s=settings.held_feedback_ttl_s,
    )


def optional_floats(values: np.ndarray) -> list[float | None]:
    """Python floats, NaN (none given) as None."""
    return [None if v != v else v for v in values.tolist()]  # NaN is the one v != v


class RacerService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        router: Router | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router  # scores queries that carry text or an embedding
        self.clock = clock
        router_hash = identity.router_hash(settings.router_file)
        self.scopes = {
            name: ScopeState(name, cfg, identity.scope_identity(cfg, router_hash))
            for name, cfg in settings.scopes.items()
        }
        self.prices = {name: dict(zip(cfg.model_names, cfg.prices, strict=True))
                       for name, cfg in settings.scopes.items()}  # fmt: skip
        self.leader = Leader(settings, store, self.scopes, clock=clock)  # used on the leader
        self._unknown = set(self.scopes)  # scopes whose incarnation this process has not seen
        secret = settings.audit_key.get_secret_value().encode()
        self._audit_key = hashlib.blake2b(secret, digest_size=32).digest()  # any length

    # -- routing -------------------------------------------------------------------------

    async def route(
        self, queries: Sequence[QueryMessage], *, sent_at: Sequence[float] | None = None
    ) -> list[Routed | Rejected]:
        """Decide every query of a batch and store the decisions; one store round trip for
        the whole batch. Raises `StoreUnavailableError` (nothing stored, nothing to publish:
        the batch is retried), so that no decision is published that Redis does not hold.
        ``sent_at``: each query's record time (Kafka timestamp), for a redelivery's search."""
        started = time.perf_counter()

        async def decide_and_store() -> tuple[list[Routed | Rejected], list[Any], list[Any]]:
            await self._know_incarnations()
            # After a reset this decides again, at lam = 1.
            results, writes = self._decide_batch(queries, sent_at)
            return results, writes, await self.store.route([w for _, w in writes])

        results, writes, stored = await self._despite_state_loss(decide_and_store)
        for (i, _), kept in zip(writes, stored, strict=True):
            if kept.first is not None:  # a redelivery: publish the first decision again
                results[i] = self._rebuild(queries[i], kept.first)
            elif kept.beyond:  # its first decision, if any, expired: say this one is anew
                results[i] = self._redecided(cast(Routed, results[i]))
        metrics.count_decisions([r.fields for r in results if isinstance(r, Routed)], self.prices)
        metrics.ROUTE_SECONDS.observe(time.perf_counter() - started)
        return results

    def decide(self, queries: Sequence[QueryMessage]) -> list[Routed | Rejected]:
        """Decide every query at the thresholds in memory; stores and counts nothing (the
        ``route`` command: what the stream would decide right now)."""
        return self._decide_batch(queries)[0]

    def _decide_batch(
        self, queries: Sequence[QueryMessage], sent_at: Sequence[float] | None = None
    ) -> tuple[list[Routed | Rejected], list[tuple[int, PendingWrite]]]:
        results: list[Routed | Rejected | None] = [self._reject(q) for q in queries]
        by_scope: dict[str, list[int]] = defaultdict(list)
        for i, (query, result) in enumerate(zip(queries, results, strict=True)):
            if result is None:
                by_scope[query.scope].append(i)
        writes: list[tuple[int, PendingWrite]] = []
        for name, rows in by_scope.items():
            sent = [None] * len(rows) if sent_at is None else [sent_at[i] for i in rows]
            decided = self._decide(self.scopes[name], [queries[i] for i in rows], sent)
            for i, (routed, write) in zip(rows, decided, strict=True):
                results[i] = routed
                writes.append((i, write))
        return [r for r in results if r is not None], writes

    def _reject(self, query: QueryMessage) -> Rejected | None:
        scope = self.scopes.get(query.scope)
        if scope is None:
            return Rejected("unknown_scope", f"unknown scope {query.scope!r}")
        if query.scores is None:
            if self.router is None:
                return Rejected("no_scores", "the query has no scores and no base router is set")
            problem = self.router.input_problem(query)
            return None if problem is None else Rejected("router_input", problem)
        if query.scores.keys() == scope.model_set:  # the common case, in one comparison
            return None
        unknown = sorted(set(query.scores) - scope.model_set)
        if unknown:
            return Rejected(
                "unknown_model", f"unknown model {unknown[0]!r} in scope {scope.name!r}"
            )
        missing = [m for m in scope.models if m not in query.scores]
        if missing:
            return Rejected("missing_score", f"no score for model {missing[0]!r}")
        return None

    def _decide(
        self, scope: ScopeState, batch: Sequence[QueryMessage], sent_at: Sequence[float | None]
    ) -> list[tuple[Routed, PendingWrite]]:
        scores, p_abstain, given = self._inputs(scope, batch)
        th = scope.threshold
        decisions = core.decide(
            scope.levels(scores, p_abstain), th.lam, models=scope.models, prices=scope.prices
        )
        now = self.clock()
        rate = audit_rate(th, self.settings.audit_rate)
        incarnation = scope.incarnation  # the store refuses the batch if Redis' state is newer
        certificate = PendingRecord(status_flags(th.status), 0, 0, 0, th.version, 0, th.lam, now,
                                    rate, b"")  # fmt: skip
        common = self._batch_fields(scope, certificate)
        out = []
        # Python lists and floats from here on: numpy scalars cost ten times as much per
        # access, and this loop runs once per routed query.
        covariate = covariate_flags(th.covariate_cut, scores.max(axis=1).tolist())
        rows = zip(batch, decisions, scores.tolist(), optional_floats(given),
                   pack_scores(scores, p_abstain), covariate, sent_at, strict=True)  # fmt: skip
        for q, d, row, p_given, packed, flags, sent in rows:
            audit = audit_draw(scope.name, q.query_id, key=self._audit_key) < rate
            write = PendingWrite(scope.name, q.query_id, packed, th.lam, audit, d.indices, now,
                                 th.version, th.status, rate, flags, incarnation, sent)  # fmt: skip
            out.append((self._encode(scope, common, q, d, row, p_given, audit=audit), write))
        return out

    async def _know_incarnations(self) -> None:
        """Learn each scope's incarnation before this process writes for it (once)."""
        if self._unknown:
            for name in sorted(self._unknown):
                await self.leader.know(self.scopes[name])
                self._unknown.discard(name)

    async def _despite_state_loss(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call``, again after each scope whose state Redis lost was reset (at most once
        per scope: a second loss within one batch is an outage, retried as one)."""
        for _ in self.scopes:
            try:
                return await call()
            except StateLostError as lost:
                self.leader.refused(lost)
        return await call()

    def _rebuild(self, query: QueryMessage, first: PendingRecord) -> Routed | Rejected:
        """The first decision of a redelivered query, byte for byte: the same quantised
        scores decided at the stored lam, with the stored certificate and audit draw. An id
        routed before with other scores is no redelivery: its first decision stands, and
        this one, which could never be calibrated, is rejected."""
        scope = self.scopes[query.scope]
        scores, p_abstain, given = self._inputs(scope, [query])
        if content_hash(pack_scores(scores, p_abstain)[0]) != first.content:
            return Rejected("reused_query_id", f"query id {query.query_id!r} was routed "
                            "before with other scores; its first decision stands")  # fmt: skip
        [d] = core.decide(
            scope.levels(scores, p_abstain), first.lam, models=scope.models, prices=scope.prices
        )
        [p_given] = optional_floats(given)
        common = self._batch_fields(scope, first)
        return self._encode(scope, common, query, d, scores[0].tolist(), p_given, audit=first.audit)

    @staticmethod
    def _redecided(routed: Routed) -> Routed:
        metrics.REDECIDED.labels(routed.fields["scope"]).inc()
        return Routed.encode({**routed.fields, "redecided": True})

    @staticmethod
    def _batch_fields(scope: ScopeState, made: PendingRecord) -> DecisionFields:
        """The fields of every decision made with one certificate and audit rate (now, or
        stored with a first decision); the query's own fields are placeholders here."""
        th = scope.threshold  # alpha, delta and bound are the scope's
        return DecisionFields(
            query_id="", scope=scope.name, models=[], abstain=False, flag_unanswerable=False,
            audit=False, audit_rate=made.audit_rate, lam=made.lam,
            threshold_version=made.version, threshold_status=cast(Status, made.status),
            alpha=th.alpha, delta=th.delta, bound=th.bound, scores={}, p_abstain=None,
            decided_at=made.decided_at, redecided=False,
        )  # fmt: skip

    @staticmethod
    def _encode(
        scope: ScopeState,
        common: DecisionFields,
        q: QueryMessage,
        d: core.Decision,
        row: list[float],
        p_given: float | None,
        *,
        audit: bool,
    ) -> Routed:
        # Replacing keys of a copy keeps the field order and costs less than half of
        # building the dict anew: this runs once per routed query.
        return Routed.encode({
            **common, "query_id": q.query_id, "models": list(d.models), "abstain": d.abstain,
            "flag_unanswerable": d.flag_unanswerable, "audit": audit,
            "scores": dict(zip(scope.models, row, strict=True)), "p_abstain": p_given,
        })  # fmt: skip

    def _inputs(
        self, scope: ScopeState, batch: Sequence[QueryMessage]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quantised scores and abstention scores, and the given p_abstain (NaN where
        none), quantised: decisions are made on exactly what the window will hold."""
        raw, given = self._scores(scope, batch)
        scores = quantise(raw)
        p_abstain = quantise(np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given))
        return scores, p_abstain, np.where(np.isnan(given), np.nan, p_abstain)

    def _scores(
        self, scope: ScopeState, batch: Sequence[QueryMessage]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (n, K) in catalogue order and the given p_abstain (NaN where none): from
        the messages, or from the base router for queries that carry text or an embedding."""
        scores = np.zeros((len(batch), len(scope.models)))
        given = np.array([np.nan if q.p_abstain is None else q.p_abstain for q in batch])
        carried = [i for i, q in enumerate(batch) if q.scores is not None]
        if carried:
            rows = [list(map(batch[i].scores.__getitem__, scope.models)) for i in carried]  # type: ignore[index]
            scores[carried] = rows
        needing = [i for i, q in enumerate(batch) if q.scores is None]
        if needing:
            assert self.router is not None  # _reject let them through
            routed = self.router.score([batch[i] for i in needing]).select(scope.models)
            scores[needing] = routed.scores
            if routed.p_abstain is not None:
                given[needing] = np.where(
                    np.isnan(given[needing]), routed.p_abstain, given[needing]
                )
        return scores, given

    # -- feedback ------------------------------------------------------------------------

    async def record_feedback(
        self, events: Sequence[FeedbackMessage]
    ) -> list[FeedbackOutcome | Rejected]:
        """Merge labels into pending records. Raises `StoreUnavailableError` to be retried."""
        horizon = self.clock() - self.settings.pending_ttl_s
        results: list[FeedbackOutcome | Rejected] = []
        writes: list[tuple[int, FeedbackMessage]] = []
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
                writes.append((i, event))

        async def store() -> list[FeedbackOutcome]:
            await self._know_incarnations()
            return await self.store.feedback([
                LabelWrite(e.scope, e.query_id, e.labels, self.scopes[e.scope].incarnation)
                for _, e in writes
            ])  # fmt: skip

        outcomes = await self._despite_state_loss(store)
        for (i, _), outcome in zip(writes, outcomes, strict=True):
            results[i] = outcome
        for event, result in zip(events, results, strict=True):
            if isinstance(result, FeedbackOutcome):
                metrics.FEEDBACK.labels(event.scope, result.value).inc()
        return results

    # -- thresholds ----------------------------------------------------------------------

    async def refresh_thresholds(self, *, as_stored: bool = False) -> list[ThresholdMessage]:
        """Apply thresholds that the leader stored since the last look (every worker);
        ``as_stored``: whatever their identity (the read-only tools show what Redis holds).
        A stored threshold belongs to the state Redis holds now; one older than the threshold
        routed on (or none at all) means that state went back (a replica promoted without
        the last writes): the scope is reset as when its incarnation changes."""
        applied = []
        for scope in self.scopes.values():
            held, incarnation = scope.threshold.version, scope.incarnation  # before the read
            found, raw = await self.store.current(scope.name)
            stored = None if raw is None else ThresholdMessage.parse(raw)
            if not incarnation:
                await self.leader.know(scope)
                self._unknown.discard(scope.name)
            elif found != scope.incarnation:
                self.leader.refused(StateLostError(scope.name, found, "incarnation changed"))
            elif incarnation == scope.incarnation and held > (stored.version if stored else 0):
                kept = stored.version if stored else 0
                why = f"threshold v{held} is gone, Redis holds v{kept}"
                self.leader.state_lost(scope.name, found, why=why)
            if stored is None or stored.version <= scope.seen_version:
                continue
            refused = identity.refusal(stored, scope.config, scope.identity.fingerprint)
            if refused is None or as_stored:
                scope.apply(stored)
                applied.append(stored)
            else:
                self._refuse(scope, stored, refused)
        return applied

    @staticmethod
    def _refuse(scope: ScopeState, stored: ThresholdMessage, why: str) -> None:
        """Never route on a threshold certified for other records or settings: keep the one
        in memory (lam = 1 at a start) until the leader's own certifies."""
        scope.seen_version = stored.version
        if stored.scope_id in (None, scope.identity.fingerprint):
            scope.recalibrate_now = "settings"  # the same records: recalibrate them at once
        else:
            # Another identity's leader voided the records this worker's threshold was
            # certified on: route on every model until the scope certifies again.
            scope.apply(scope.fallback("scope_changed"))
        log.warning("scope %s: not routing on stored threshold v%d (lam %.4f): %s; lam %.4f "
                    "until a threshold of this scope's own certifies", scope.name,
                    stored.version, stored.lam, why, scope.threshold.lam)  # fmt: skip

    def fresh_thresholds(self) -> dict[str, bool]:
        """Per scope: a certified threshold not older than ``threshold_max_age_s``."""
        now, limit = self.clock(), self.settings.threshold_max_age_s
        return {
            name: scope.threshold.status == "certified"
            and now - scope.threshold.computed_at <= limit
            for name, scope in self.scopes.items()
        }

    async def history(self, scope: str, *, since: float = 0.0) -> dict[str, list[Any]]:
        """Thresholds and alerts of a scope since a time, oldest first (monitor, dashboard)."""
        if scope not in self.scopes:
            raise InvalidInputError(f"unknown scope {scope!r}")
        thresholds = [
            ThresholdMessage.parse(raw) for raw in await self.store.threshold_history(scope)
        ]
        alerts = [AlertMessage.parse(raw) for raw in await self.store.alerts(scope)]
        return {
            "thresholds": [t for t in thresholds if t.computed_at >= since],
            "alerts": [a for a in alerts if a.at >= since],
        }
