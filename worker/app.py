"""The Faust app: wiring only. Handlers parse with the pydantic models, call the service
and send the results; `racer_online.kafka.batches` feeds them whole fetches and commits a batch once
every effect is done (Redis written, every send acknowledged by the broker). Faust
creates the topics and runs the leader election, the timers and the web views.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from racer_online.errors import StoreUnavailableError
from racer_online.kafka.batches import BatchConsumer, BatchProducer, Outgoing, Record
from racer_online.messages import (
    DeadLetter,
    FeedbackMessage,
    MessageError,
    QueryMessage,
)
from racer_online.routers.files import load_router
from racer_online.service import RacerService, Rejected, metrics, store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore
from worker import web
from worker.security import kafka_options

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # then 5 s until Redis answers


def create_app(settings: Settings) -> faust.App:
    timings: dict[str, Any] = {
        "broker_session_timeout": settings.broker_session_timeout_s,
        "broker_heartbeat_interval": settings.broker_heartbeat_interval_s,
        "broker_rebalance_timeout": settings.broker_rebalance_timeout_s,
    }
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_broker,
        processing_guarantee="at_least_once",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_port=settings.web_port,
        **kafka_options(settings),
        **{k: v for k, v in timings.items() if v is not None},
    )
    router = load_router(settings.router_file) if settings.router_file else None
    store = RedisStore.from_settings(settings, store_config(settings))
    service = RacerService(settings, store, router=router)
    names = settings.topics

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_serializer="raw",
            value_serializer="raw",
            partitions=names.partitions,
            replicas=names.replication,
            internal=True,  # so Faust creates it with the configured partition count
        )

    queries, feedback = topic(names.queries), topic(names.feedback)
    decisions, thresholds, dlq = topic(names.decisions), topic(names.thresholds), topic(names.dlq)
    alerts = topic(names.alerts)

    producer = BatchProducer(settings)
    app.add_dependency(producer)  # so it starts before the timers

    def dead(record: Record, error_class: str, reason: str) -> Outgoing:
        letter = DeadLetter.from_error(
            record.value, ValueError(reason), error_class=error_class, source_topic=record.topic,
            partition=record.partition, offset=record.offset, key=record.key,
        )  # fmt: skip
        metrics.DLQ.labels(record.topic, error_class).inc()
        return (names.dlq, None, letter.to_bytes())

    async def route(records: Sequence[Record]) -> Awaitable[Any]:
        parsed, out = _parse(records, QueryMessage, dead)
        results = await service.route([q for _, q in parsed])
        for (record, query), result in zip(parsed, results, strict=True):
            if isinstance(result, Rejected):
                out.append(dead(record, result.kind, result.reason))
            else:
                out.append((names.decisions, query.query_id.encode(), result.raw))
        return await producer.send(out)

    async def record_feedback(records: Sequence[Record]) -> Awaitable[Any]:
        parsed, out = _parse(records, FeedbackMessage, dead)
        outcomes = await _until_stored(service.record_feedback, [m for _, m in parsed])
        for (record, _), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                out.append(dead(record, outcome.kind, outcome.reason))
        return await producer.send(out)

    consumers = [
        # Two routed batches commute (Redis keeps a query's first decision and every copy
        # publishes it), so one is computed while the other waits for Redis. Feedback
        # must reach Redis in partition order: the first label of a model wins.
        BatchConsumer(settings, names.queries, f"{settings.app_id}.route", route, max_in_flight=2),
        BatchConsumer(settings, names.feedback, f"{settings.app_id}.feedback", record_feedback),
    ]

    @app.task  # type: ignore[untyped-decorator]
    async def consume() -> None:
        await _declare(queries, feedback, decisions, dlq)
        await asyncio.gather(*(app.add_runtime_dependency(c) for c in consumers))
        # A started worker's objects live as long as it does: keep every full collection
        # from walking them again (a fifth of the routing CPU, docs/benchmarks.md).
        gc.collect()
        gc.freeze()

    @app.timer(settings.threshold_poll_s)  # type: ignore[untyped-decorator]
    async def refresh_thresholds() -> None:
        try:
            await service.store_unstored()
            await service.refresh_thresholds()
        except StoreUnavailableError as exc:
            log.warning("keeping the thresholds in memory: %s", exc)

    last_tick = 0.0

    # The leader looks at new window records as often as workers look for new thresholds.
    tick_s = min(settings.threshold_poll_s, settings.recalibrate_interval_s)

    @app.timer(tick_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def recalibrate() -> None:
        nonlocal last_tick
        if time.monotonic() - last_tick > 5 * max(tick_s, 1.0):
            service.leader.forget_windows()  # leadership was elsewhere: re-read the whole window
        last_tick = time.monotonic()
        try:
            updates = await service.leader.recalibrate_due()
        except StoreUnavailableError as exc:
            log.warning("recalibration waits for Redis: %s", exc)
            return
        for u in updates.thresholds:
            log.info("scope %s: threshold v%d lam=%.4f %s (n=%d, %s)",
                     u.scope, u.version, u.lam, u.status, u.n, u.reason)  # fmt: skip
        for a in updates.alerts:
            log.warning("scope %s: %s alert: %s", a.scope, a.kind, a.message)
        await _declare(thresholds, alerts)
        await (await producer.send(
            [(names.thresholds, u.scope.encode(), u.to_bytes()) for u in updates.thresholds]
            + [(names.alerts, a.scope.encode(), a.to_bytes()) for a in updates.alerts]
        ))  # fmt: skip

    web.register(app, service, consumers)
    return app


def _parse(
    records: Sequence[Record], model: Any, dead: Callable[[Record, str, str], Outgoing]
) -> tuple[list[Any], list[Outgoing]]:
    """(record, message) for the valid records; a dead letter for each of the others."""
    parsed, letters = [], []
    for record in records:
        if record.value is None:  # a tombstone: nothing to parse
            letters.append(dead(record, "EmptyValue", "the record has no value"))
            continue
        try:
            parsed.append((record, model.parse(record.value)))
        except MessageError as exc:
            letters.append(dead(record, exc.reason.split(":", 1)[0], exc.reason))
    return parsed, letters


async def _until_stored(call: Any, items: list[Any]) -> Any:
    """Retry with backoff while Redis is unreachable; the batch stays unacknowledged."""
    attempt = 0
    while True:
        try:
            return await call(items)
        except StoreUnavailableError as exc:
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            log.warning("feedback waits %.1f s for Redis: %s", delay, exc)
            await asyncio.sleep(delay)
            attempt += 1


async def _declare(*topics: faust.TopicT) -> None:
    """Create output topics with the configured partitions (Faust only declares inputs);
    Faust remembers, so later calls cost nothing."""
    for topic in topics:
        await topic.maybe_declare()
