"""The Faust app: wiring only. Handlers parse with the pydantic models, call the service and
return the messages to send; `racer_online.kafka.batches` feeds them whole fetches, sends
what they return and commits a batch once every effect is done (Redis written, every send
acknowledged by the broker). Faust creates the topics and runs the leader election, the
timers and the web views.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from racer_online.errors import RacerError, StoreUnavailableError
from racer_online.kafka import offsets, retries
from racer_online.kafka.batches import BatchConsumer, BatchProducer, Outgoing, Record
from racer_online.kafka.retries import Seen
from racer_online.messages import (
    AlertMessage,
    DeadLetter,
    FeedbackMessage,
    MessageError,
    QueryMessage,
    decision_key,
)
from racer_online.routers.files import load_router
from racer_online.service import RacerService, Rejected, Routed, metrics, store_config
from racer_online.service.dead_scopes import DeadScopes
from racer_online.service.outages import OutageLog
from racer_online.settings import Settings
from racer_online.store import RedisStore
from worker import api, web
from worker.security import kafka_options, web_options

log = logging.getLogger(__name__)


TRANSIENT = (StoreUnavailableError,)  # the batch is retried, its partitions paused
# Rejections that a worker upgraded meanwhile may not make: parked, tried again until the
# grace is over (kafka/retries.py). Any other rejection is final: a dead letter at once.
NOT_YET = frozenset({"unknown_scope", "no_scores"})


class Worker:
    """One worker: the Faust app, the service it calls, the batch consumers of the two input
    topics and of their retry topics, and the leader's recalibration timer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = names = settings.topics
        self.retry_topics = {names.queries: names.queries_retry,
                             names.feedback: names.feedback_retry}  # fmt: skip
        self.app = _faust_app(settings)
        router = load_router(settings.router_file) if settings.router_file else None
        store = RedisStore.from_settings(settings, store_config(settings))
        self.service = RacerService(settings, store, router=router)
        self.producer = BatchProducer(settings)
        self.app.add_dependency(self.producer)  # so it starts before the timers
        groups = offsets.input_groups(settings)
        retry_groups = offsets.retry_groups(settings)
        self.consumers = [
            # Two routed batches commute (Redis keeps a query's first decision and every copy
            # publishes it), so one is computed while the other waits for Redis. Feedback
            # must reach Redis in partition order: the first label of a model wins.
            BatchConsumer(settings, names.queries, groups[names.queries], self.route, self.producer,
                          max_in_flight=2, retry_on=TRANSIENT),
            BatchConsumer(settings, names.feedback, groups[names.feedback], self.record_feedback,
                          self.producer, retry_on=TRANSIENT),
            # The parked records, read with their delay (kafka/retries.py).
            BatchConsumer(settings, names.queries_retry, retry_groups[names.queries_retry],
                          self.route_parked, self.producer, retry_on=TRANSIENT,
                          offset_reset="earliest"),
            BatchConsumer(settings, names.feedback_retry, retry_groups[names.feedback_retry],
                          self.record_parked_feedback, self.producer, retry_on=TRANSIENT,
                          offset_reset="earliest"),
        ]  # fmt: skip
        self.dead_scopes = DeadScopes()
        self._leading = False  # Faust's leader at the last tick
        self._thresholds_outage = OutageLog(log, "keeping the thresholds in memory")
        self._recalibration_outage = OutageLog(log, "recalibration waits for Redis")
        self.app.task(self.consume)
        self.app.task(self.freeze)
        self.app.timer(settings.threshold_poll_s)(self.refresh_thresholds)
        # Every worker ticks; the Faust leader recalibrates, the others give back any lease.
        self.app.timer(settings.leader_tick_s)(self.recalibrate)
        self.app.timer(settings.dead_scope_alert_s)(self.alert_dead_scopes)
        self.app.on_before_shutdown.connect(self._release_leases)
        web.register(self.app, settings, self.service, self.consumers)
        self.api = api.DecisionAPI(self.decide_requests, self.publish_feedback,
                                   scopes=settings.scopes, max_wait_s=settings.api_batch_wait_s,
                                   max_batch=settings.batch_size)  # fmt: skip
        self.api.add_routes(cast(AiohttpWeb, self.app.web).web_app.router)

    def topic(self, name: str) -> faust.TopicT:
        return self.app.topic(
            name,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.names.partitions,
            replicas=self.names.replication,
            internal=True,  # so Faust creates it with the configured partition count
        )

    # -- the handlers: records in, messages to send out ------------------------------------

    async def route(self, records: Sequence[Record]) -> list[Outgoing]:
        return await self._route(retries.fresh(records))

    async def route_parked(self, records: Sequence[Record]) -> list[Outgoing]:
        seen, out = await self._unpark(records)
        return out + await self._route(seen)

    async def record_feedback(self, records: Sequence[Record]) -> list[Outgoing]:
        return await self._record_feedback(retries.fresh(records))

    async def record_parked_feedback(self, records: Sequence[Record]) -> list[Outgoing]:
        seen, out = await self._unpark(records)
        return out + await self._record_feedback(seen)

    async def _route(self, seen: Sequence[Seen]) -> list[Outgoing]:
        parsed, out = self._parse(seen, QueryMessage)
        sent_at = [item.record.timestamp / 1000 for item, _ in parsed]  # a redelivery's search
        results = await self.service.route([query for _, query in parsed], sent_at=sent_at)
        for (item, query), result in zip(parsed, results, strict=True):
            if isinstance(result, Rejected):
                out.append(self._rejected(item, query.scope, result))
            else:
                self.dead_scopes.passed(query.scope)
                out.append(self.decision(query, result))
        return out

    def decision(self, query: QueryMessage, routed: Routed) -> Outgoing:
        return (self.names.decisions, decision_key(query.scope, query.query_id), routed.raw)

    async def decide_requests(self, queries: Sequence[QueryMessage]) -> list[Routed | Rejected]:
        """The decision API's batches: stored as a fetch's are, then published on the
        decisions topic; returned once the broker acknowledged them (rejections are answered
        to the caller, not dead-lettered: nothing of them is stored)."""
        results = await self.service.route(queries)
        await self.producer.send_and_wait([self.decision(q, r) for q, r in
                                           zip(queries, results, strict=True)
                                           if isinstance(r, Routed)])  # fmt: skip
        return results

    async def publish_feedback(self, events: Sequence[FeedbackMessage]) -> None:
        """The decision API's feedback, on the feedback topic (joined by its consumer)."""
        await self.producer.send_and_wait(
            [(self.names.feedback, e.query_id.encode(), e.to_bytes()) for e in events]
        )

    async def _record_feedback(self, seen: Sequence[Seen]) -> list[Outgoing]:
        parsed, out = self._parse(seen, FeedbackMessage)
        outcomes = await self.service.record_feedback([m for _, m in parsed])
        for (item, event), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                out.append(self._rejected(item, event.scope, outcome))
            else:
                self.dead_scopes.passed(event.scope)
        return out

    def _rejected(self, item: Seen, scope: str, rejected: Rejected) -> Outgoing:
        """A dead letter, or, for a rejection a worker may not make later, the record parked
        until the grace since it was first seen (the worker's clock) is over."""
        waited_s = time.time() - item.first_seen
        if rejected.kind in NOT_YET and waited_s < self.settings.unknown_scope_grace_s:
            retry = self.retry_topics[item.record.topic]
            metrics.PARKED.labels(item.record.topic, rejected.kind).inc()
            return retries.park(retry, item, rejected.kind, rejected.reason,
                                delay_s=self.settings.retry_delay_s)  # fmt: skip
        self.dead_scopes.dead(scope, rejected.kind)
        return self.dead(item.record, rejected.kind, rejected.reason)

    async def _unpark(self, records: Sequence[Record]) -> tuple[list[Seen], list[Outgoing]]:
        """The original records of parked ones, once due; a dead letter for any other."""
        unparked, letters = [], []
        for record in records:
            try:
                unparked.append(retries.unpark(record))
            except MessageError as exc:
                letters.append(self.dead(record, "NotParked", exc.reason))
        await retries.until_due([p for _, p in unparked], limit_s=self.settings.retry_delay_s)
        return [seen for seen, _ in unparked], letters

    def dead(self, record: Record, error_class: str, reason: str) -> Outgoing:
        letter = DeadLetter.from_error(
            record.value, ValueError(reason), error_class=error_class, source_topic=record.topic,
            partition=record.partition, offset=record.offset, key=record.key,
        )  # fmt: skip
        metrics.DLQ.labels(record.topic, error_class).inc()
        return (self.names.dlq, None, letter.to_bytes())

    def _parse(self, seen: Sequence[Seen], model: Any) -> tuple[list[Any], list[Outgoing]]:
        """(seen, message) for the valid records; a dead letter for each of the others."""
        parsed, letters = [], []
        for item in seen:
            record = item.record
            if record.value is None:  # a tombstone: nothing to parse
                letters.append(self.dead(record, "EmptyValue", "the record has no value"))
                continue
            try:
                parsed.append((item, model.parse(record.value)))
            except MessageError as exc:
                letters.append(self.dead(record, exc.reason.split(":", 1)[0], exc.reason))
        return parsed, letters

    # -- the tasks and timers -----------------------------------------------------------------

    async def consume(self) -> None:
        if "audit_key" not in self.settings.model_fields_set:
            log.warning("RACER_AUDIT_KEY is not set: audits are drawn under a random key of this "
                        "process; give every worker the same one (docs/operations.md)")  # fmt: skip
        names = self.names
        await _declare(*(self.topic(t) for t in (
            names.queries, names.feedback, names.decisions, names.dlq, names.alerts,
            names.queries_retry, names.feedback_retry)))  # fmt: skip
        await asyncio.gather(*(self.app.add_runtime_dependency(c) for c in self.consumers))

    async def freeze(self) -> None:
        """Once the app has started (a task): a started worker's objects live as long as it
        does, so keep every full collection from walking them again (a fifth of the routing
        CPU, docs/benchmarks.md)."""
        gc.collect()
        gc.freeze()

    async def refresh_thresholds(self) -> None:
        try:
            await self.service.refresh_thresholds()
        except StoreUnavailableError as exc:
            self._thresholds_outage.failed(exc)
        else:
            self._thresholds_outage.succeeded()

    async def recalibrate(self) -> None:
        """Faust's leader recalibrates each scope whose lease it holds (`service.lease`):
        an old leader that still runs, stalled or cut off from Kafka, writes nothing."""
        if not self.app.is_leader():
            if self._leading:
                self._leading = False
                await self._release_leases()
            return
        if not self._leading:  # declare the topics only the leader writes, once per leadership
            await _declare(self.topic(self.names.thresholds), self.topic(self.names.alerts))
            self._leading = True
        try:
            updates = await self.service.leader.recalibrate_due()
        except StoreUnavailableError as exc:
            self._recalibration_outage.failed(exc)
            return
        self._recalibration_outage.succeeded()
        for u in updates.thresholds:
            log.info("scope %s: threshold v%d lam=%.4f %s (n=%d, %s)",
                     u.scope, u.version, u.lam, u.status, u.n, u.reason)  # fmt: skip
        for a in updates.alerts:
            log.warning("scope %s: %s alert: %s", a.scope, a.kind, a.message)
        # What Redis holds and the topics miss (this tick's, or an earlier failed send's);
        # a broker that does not answer within half a tick leaves the send to the producer
        # (the next ticks find it in flight), so that the tick keeps its pace.
        try:
            await self.service.leader.outbox.publish(
                self.producer.enqueue, wait_s=self.settings.leader_tick_s / 2
            )
        except StoreUnavailableError as exc:
            log.warning("thresholds and alerts wait for Redis to be published: %s", exc)

    async def alert_dead_scopes(self) -> None:
        """Every worker: a scope whose messages here were all dead-lettered since the last
        tick raises an alert (a heuristic trigger for an operator)."""
        alerts = []
        for dead in self.dead_scopes.take():
            alert = AlertMessage(
                scope=dead.scope, kind="all_dead_lettered",
                message=f"all {dead.dead_letters} messages of scope {dead.scope!r} in the last "
                        f"{self.settings.dead_scope_alert_s:g} s went to the dead-letter topic",
                evidence={"dead_letters": dead.dead_letters, "reasons": dead.reasons},
            )  # fmt: skip
            log.warning("scope %s: %s alert: %s", alert.scope, alert.kind, alert.message)
            metrics.ALERTS.labels(alert.scope, alert.kind).inc()
            alerts.append((self.names.alerts, alert.scope.encode(), alert.to_bytes()))
        if alerts:
            await self.producer.send_and_wait(alerts)

    async def _release_leases(self, *_: Any, **__: Any) -> None:
        """Leadership moved or the worker stops: the next leader need not wait for the
        leases to lapse (``RACER_LEADER_LEASE_S``)."""
        try:
            await self.service.leader.release()
        except StoreUnavailableError as exc:
            log.warning("the leader's leases lapse on their own: %s", exc)


# Faust's own group only elects the leader: its members have nothing to hand over, and a new
# group's first join waits half the session timeout on the embedded broker, so it gets the
# batch consumers' (aiokafka's) 10 s instead of Faust's 60 s unless a setting says otherwise.
FAUST_SESSION_TIMEOUT_S = 10.0


def _faust_app(settings: Settings) -> faust.App:
    timings: dict[str, Any] = {
        "broker_session_timeout": settings.broker_session_timeout_s or FAUST_SESSION_TIMEOUT_S,
        "broker_heartbeat_interval": settings.broker_heartbeat_interval_s,
        "broker_rebalance_timeout": settings.broker_rebalance_timeout_s,
    }
    return faust.App(
        settings.app_id,
        broker=settings.kafka_broker,
        processing_guarantee="at_least_once",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,  # the address it listens on (web_host is only advertised)
        web_port=settings.web_port,
        **kafka_options(settings),
        **web_options(settings),
        **{k: v for k, v in timings.items() if v is not None},
    )


def run(settings: Settings) -> None:
    """Run a worker until it is stopped (SIGTERM, Ctrl-C)."""
    runner = _Runner(Worker(settings).app, settings)
    try:
        runner.execute_from_commandline()
    except SystemExit:
        # mode turns a crash into exit status 1; a stop racer-online explains ends with
        # its line, as every other command's error does.
        if isinstance(runner.crash_reason, RacerError):
            raise runner.crash_reason from None
        raise


class _Runner(faust.Worker):
    """Faust's worker at racer-online's log levels: Faust's, mode's and the Kafka client's
    lines at ``RACER_LOG_LEVEL`` (WARNING: their INFO lines are off), the worker's own at
    `Settings.own_log_level`. The handlers take the more verbose of the two."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        levels = (
            logging.getLevelName(settings.log_level),
            logging.getLevelName(settings.own_log_level),
        )
        # redirect_stdouts=False: print() stays print(), not a WARNING log line.
        super().__init__(app, loglevel=min(levels), redirect_stdouts=False)
        self.racer_settings = settings

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        logger.setLevel(self.racer_settings.log_level)  # every library's logger inherits it
        for own in ("racer_online", "worker"):
            logging.getLogger(own).setLevel(self.racer_settings.own_log_level)


async def _declare(*topics: faust.TopicT) -> None:
    """Create output topics with the configured partitions (Faust only declares inputs)."""
    for topic in topics:
        await topic.maybe_declare()
