"""Send what a batch handler produced, one broker batch per partition."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from mode import Service

from racer_online.kafka import clients
from racer_online.settings import Settings

Outgoing: TypeAlias = tuple[str, bytes | None, bytes]  # topic, key, value
MAX_BATCH_BYTES = 256 << 10  # per partition and request


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
