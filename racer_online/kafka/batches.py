"""Consume a topic in batches with a plain aiokafka consumer group, inside the Faust app.

Faust's stream layer costs about 105 µs of CPU per event (docs/benchmarks.md) against 20 µs
for aiokafka, which caps a worker far below the throughput the service reaches in batches.
So the two input topics are read here: ``getmany`` hands a whole fetch to the handler,
which returns the messages to send once the batch's Redis writes are done; the consumer
queues them on the producer and commits the batch's offsets once the broker acknowledged
every one and the previous batch is committed, while the next batches are already being
handled: up to ``max_in_flight`` at once, so that one is computed while
another waits for Redis or the broker (only where the effects of two batches commute). A
crash, a shutdown or a rebalance in the middle redelivers what is uncommitted, and the
handlers are idempotent: at-least-once, nothing lost, nothing doubled. Faust still runs
the app: topic creation, leader election, timers and the web views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from mode import Service

from racer_online.kafka import clients
from racer_online.service import metrics
from racer_online.settings import Settings

log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Outgoing: TypeAlias = tuple[str, bytes | None, bytes]  # topic, key, value
Handler: TypeAlias = Callable[[Sequence[Record]], Awaitable[Sequence[Outgoing]]]
MAX_FETCH_BYTES = 4 << 20  # per partition: room for the largest message the DLQ reports
MAX_BATCH_BYTES = 256 << 10  # per partition and request
FINISH_WAIT_S = 5.0  # for the batches in flight, on a rebalance or a shutdown


class BatchConsumer(Service):
    def __init__(
        self,
        settings: Settings,
        topic: str,
        group_id: str,
        handle: Handler,
        producer: BatchProducer,
        *,
        max_in_flight: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings, self.topic, self.group_id, self.handle = settings, topic, group_id, handle
        self.producer = producer
        self.max_in_flight = max_in_flight
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Future[None] | None = None
        self._in_flight: deque[asyncio.Future[None]] = deque()  # oldest first
        self._committed: dict[TopicPartition, int] = {}
        self.assignment: frozenset[TopicPartition] = frozenset()

    @property
    def label(self) -> str:
        return f"{type(self).__name__}({self.topic})"

    @property
    def consuming(self) -> bool:
        return self._task is not None and not self._task.done()

    async def on_start(self) -> None:
        s = self.settings
        timeouts = {
            "session_timeout_ms": s.broker_session_timeout_s,
            "heartbeat_interval_ms": s.broker_heartbeat_interval_s,
            "rebalance_timeout_ms": s.broker_rebalance_timeout_s,
        }
        self.consumer = clients.consumer(
            s,
            group_id=self.group_id,
            client_id=f"{s.app_id}-{self.topic}",
            enable_auto_commit=False,  # committed after the batch's effects, below
            auto_offset_reset="earliest",
            fetch_max_wait_ms=int(s.fetch_max_wait_s * 1000),
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
            **{k: int(v * 1000) for k, v in timeouts.items() if v is not None},
        )
        self.consumer.subscribe([self.topic], listener=_FinishBatchesFirst(self))
        await self.consumer.start()
        # A handler that raises crashes this service (mode logs it): no batch is skipped.
        self._task = self.add_future(self._consume())

    async def on_stop(self) -> None:
        # Finish and commit the batch in hand, within a bound: one that waits for Redis is
        # dropped uncommitted (redelivered). Then leave the group.
        await self.finish(FINISH_WAIT_S)
        for task in (self._task, *self._in_flight):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _consume(self) -> None:
        assert self.consumer is not None
        timeout_ms = int(self.settings.batch_timeout_s * 1000)
        while not self.should_stop:
            while self._in_flight and self._in_flight[0].done():
                await self._in_flight.popleft()  # a batch that failed stops the worker here
            fetched = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.batch_size
            )
            if not fetched:
                continue
            if len(self._in_flight) >= self.max_in_flight:
                await self._in_flight.popleft()
            previous = self._in_flight[-1] if self._in_flight else None
            self._in_flight.append(asyncio.ensure_future(self._process(fetched, previous)))

    async def finish(self, timeout: float) -> None:
        """Wait, within ``timeout``, for the batches in flight to be handled and committed."""
        pending = [task for task in self._in_flight if not task.done()]
        if pending and (await asyncio.wait(pending, timeout=timeout))[1]:
            log.warning("%s: moving on with a batch in flight: it is redelivered", self.label)

    async def _process(
        self, fetched: dict[TopicPartition, list[Record]], previous: Awaitable[None] | None
    ) -> None:
        assert self.consumer is not None
        out = await self.handle([r for records in fetched.values() for r in records])
        delivered = await self.producer.enqueue(out)
        if previous is not None:
            await previous  # commits in fetch order; raises if the previous one failed
        await delivered  # a failed send raises: the worker stops before a later commit
        offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
        try:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The batch is done: a later commit covers it, or its partitions moved on and
            # their new owner redelivers it (the handlers are idempotent).
            log.warning("%s: batch not committed, may be redelivered: %s", self.label, exc)

    def assign(self, assigned: set[TopicPartition]) -> None:
        """Take the group's new assignment: publish it (``/ready``, the
        ``racer_assigned_partition`` metric) and forget what is known of partitions that
        moved away, so that this worker no longer reports their lag."""
        for tp in self.assignment - assigned:
            self._committed.pop(tp, None)
            for gauge in (metrics.ASSIGNED_PARTITION, metrics.CONSUMER_LAG):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))
        for tp in assigned:
            metrics.ASSIGNED_PARTITION.labels(tp.topic, str(tp.partition)).set(1)
        self.assignment = frozenset(assigned)
        log.info("%s: assigned partitions %s", self.label, sorted(tp.partition for tp in assigned))

    def lag(self) -> dict[TopicPartition, int]:
        """Records between what this worker committed and each assigned partition's end (as
        of the last fetch); a partition appears once a batch of it is committed."""
        if self.consumer is None:
            return {}
        out = {}
        for tp in self.consumer.assignment():
            end, done = self.consumer.highwater(tp), self._committed.get(tp)
            if end is not None and done is not None:
                out[tp] = max(end - done, 0)
        return out


class _FinishBatchesFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Let the batches in flight finish and commit before their partitions move, within a
    bound (a batch that waits for Redis must not hold up the group's rebalance; if it is
    not done by then, the partitions' next owner redelivers it)."""

    def __init__(self, batches: BatchConsumer) -> None:
        self.batches = batches

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.batches.finish(FINISH_WAIT_S)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.batches.assign(assigned)


class BatchProducer(Service):
    """Sends what a handler produced as one batch per partition: aiokafka's ``send`` costs a
    future and its callbacks per record, ``send_batch`` one per batch. Keys are partitioned
    as Kafka's default partitioner does."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()

    async def on_start(self) -> None:
        s = self.settings
        self.producer = clients.producer(
            s,
            client_id=f"{s.app_id}-producer",
            acks="all",
            # One batch per partition is in flight at a time, and the next one fills
            # meanwhile: 16 KiB (the default) holds only about 17 decisions.
            max_batch_size=MAX_BATCH_BYTES,
        )
        await self.producer.start()

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()  # sends what is queued first

    async def send_and_wait(self, records: Sequence[Outgoing]) -> None:
        """Send the records and wait until the broker acknowledged every one."""
        acknowledged = await self.enqueue(records)
        await acknowledged

    async def enqueue(self, records: Sequence[Outgoing]) -> asyncio.Future[Any]:
        """Queue the records, in order within each partition; the result completes when the
        broker has acknowledged every one (and raises if one failed)."""
        assert self.producer is not None
        partitions = {
            topic: sorted(await self.producer.partitions_for(topic))
            for topic in {r[0] for r in records}
        }
        batches: dict[tuple[str, int], BatchBuilder] = {}
        acks = []
        for topic, key, value in records:
            partition = self._partitioner(key, partitions[topic], partitions[topic])
            batch = batches.get((topic, partition))
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full
                    acks.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = batches[topic, partition] = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        for (topic, partition), batch in batches.items():
            acks.append(await self.producer.send_batch(batch, topic, partition=partition))
        return asyncio.gather(*acks)
