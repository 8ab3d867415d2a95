"""Send what a batch handler produced, one broker batch per partition."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from mode import Service

from racer_online.kafka import clients, partitioning
from racer_online.settings import Settings

Outgoing: TypeAlias = tuple[str, bytes | None, bytes]  # topic, key, value
MAX_BATCH_BYTES = 256 << 10  # per partition and request
START_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)
log = logging.getLogger(__name__)


class BatchProducer(Service):
    """Sends what a handler produced as one batch per partition: aiokafka's ``send`` costs a
    future and its callbacks per record, ``send_batch`` one per batch. Keys are partitioned
    as Kafka's default partitioner does (partitioning.py)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        for delay in (*START_RETRY_DELAYS_S, None):
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                # An idempotent producer's start asks the broker for a producer id; a broker
                # whose controller has not handed it a block of ids yet (a fresh or busy
                # cluster) answers UNKNOWN_SERVER_ERROR. aiokafka gives up at once: retry.
                await producer.stop()  # closes what start() opened
                if delay is None:
                    raise
                log.warning("the producer did not start, retried in %g s: %r", delay, exc)
                await asyncio.sleep(delay)
            else:
                self.producer = producer
                return

    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        return clients.producer(
            s,
            client_id=f"{s.app_id}-producer",
            acks="all",
            # Idempotence: the broker drops a batch the producer retries after a lost
            # answer, and a batch is retried until it lands instead of expiring, so no retry
            # doubles a decision and no failed send makes the batch consumer publish its
            # decisions again (docs/reliability.md, "The producer and the outbox").
            enable_idempotence=s.producer_idempotence,
            request_timeout_ms=int(s.producer_request_timeout_s * 1000),
            # One batch per partition is in flight at a time, and the next one fills
            # meanwhile: 16 KiB (the default) holds only about 17 decisions.
            max_batch_size=MAX_BATCH_BYTES,
        )

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
        batches: dict[tuple[str, int], BatchBuilder] = {}
        acks = []
        for (topic, key, value), partition in zip(records, await self._partitions(records),
                                                   strict=True):  # fmt: skip
            batch = batches.get((topic, partition))
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full
                    acks.append(await self.producer.send_batch(batch, topic, partition=partition))
                batch = batches[topic, partition] = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        for (topic, partition), batch in batches.items():
            acks.append(await self.producer.send_batch(batch, topic, partition=partition))
        return asyncio.gather(*acks)

    async def _partitions(self, records: Sequence[Outgoing]) -> list[int]:
        """Each record's partition as Kafka's default partitioner picks it: by its key's
        murmur2, hashed for the whole batch at once; any partition for a record without."""
        assert self.producer is not None
        chosen = [0] * len(records)
        by_topic: dict[str, list[int]] = defaultdict(list)
        for i, (topic, _, _) in enumerate(records):
            by_topic[topic].append(i)
        for topic, rows in by_topic.items():
            ids = sorted(await self.producer.partitions_for(topic))
            keyed = {i: key for i in rows if (key := records[i][1]) is not None}
            hashed = partitioning.partitions(list(keyed.values()), len(ids))
            for i, p in zip(keyed, hashed, strict=True):
                chosen[i] = ids[p]
            for i in rows:
                if i not in keyed:
                    chosen[i] = random.choice(ids)
        return chosen
