"""Consume a topic in batches with a plain aiokafka consumer group, inside the Faust app.

Faust's stream layer costs about 120 µs of CPU per event (docs/benchmarks.md) against 20 µs
for aiokafka, which caps a worker far below the throughput the service reaches in batches.
So the two input topics are read here: ``getmany`` hands a whole fetch to the handler, and
the batch's offsets are committed only after the handler returns (every Redis write and
every send acknowledged). A crash, a shutdown or a rebalance in the middle redelivers the
batch, and the handlers are idempotent: at-least-once, nothing lost, nothing doubled.
Faust still runs the app: producer, leader election, timers and the web views.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from racer_online.security import aiokafka_options
from racer_online.settings import Settings

log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Handler: TypeAlias = Callable[[Sequence[Record]], Awaitable[None]]
MAX_FETCH_BYTES = 4 << 20  # per partition: room for the largest message the DLQ reports


class BatchConsumer(Service):
    def __init__(
        self, settings: Settings, topic: str, group_id: str, handle: Handler, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings, self.topic, self.group_id, self.handle = settings, topic, group_id, handle
        self.consumer: AIOKafkaConsumer | None = None
        self._idle = asyncio.Event()  # no batch in flight: a revocation need not wait
        self._idle.set()
        self._task: asyncio.Future[None] | None = None
        self._committed: dict[TopicPartition, int] = {}

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
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"{s.app_id}-{self.topic}",
            enable_auto_commit=False,  # committed after the batch's effects, below
            auto_offset_reset="earliest",
            fetch_max_wait_ms=int(s.fetch_max_wait_s * 1000),
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
            **{k: int(v * 1000) for k, v in timeouts.items() if v is not None},
            **aiokafka_options(s),
        )
        self.consumer.subscribe([self.topic], listener=_FinishBatchFirst(self._idle))
        await self.consumer.start()
        # mode crashes the service (and the worker, for its supervisor to restart) when a
        # handler raises: a batch is never skipped.
        self._task = self.add_future(self._consume())

    async def on_stop(self) -> None:
        # Before the consumer stops: an unfinished batch is dropped uncommitted (redelivered).
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _consume(self) -> None:
        assert self.consumer is not None
        timeout_ms = int(self.settings.batch_timeout_s * 1000)
        while True:
            fetched = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.batch_size
            )
            if not fetched:
                continue
            self._idle.clear()
            try:
                await self.handle([r for records in fetched.values() for r in records])
                await self._commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
            finally:
                self._idle.set()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved on; their new owner redelivers the batch (idempotent).
            log.warning("%s: batch not committed, it will be redelivered: %s", self.label, exc)

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


class _FinishBatchFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Let the batch in flight finish and commit before its partitions move, within a bound
    (a batch that waits for Redis must not hold up the group's rebalance)."""

    WAIT_S = 5.0

    def __init__(self, idle: asyncio.Event) -> None:
        self.idle = idle

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await asyncio.wait_for(self.idle.wait(), self.WAIT_S)
        except TimeoutError:
            log.warning("rebalancing with a batch in flight: it will be redelivered")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass
