"""Read the dead-letter topic from its start to the end offsets it had when reading began."""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from racer_online.errors import RacerError
from racer_online.kafka import clients
from racer_online.messages import DeadLetter, MessageError
from racer_online.settings import Settings

POLL_MS = 500
IDLE_LIMIT_S = 30.0  # no progress for this long: the broker stopped answering


async def read_dead_letters(settings: Settings, *, topic: str | None = None) -> list[DeadLetter]:
    """Every dead letter on the topic (oldest first per partition); bounded: it stops at the
    end offsets read when it starts, so it returns while workers keep writing, and gives up
    after `IDLE_LIMIT_S` without a record."""
    name = topic or settings.topics.dlq
    await clients.check_reachable(settings)
    consumer = clients.consumer(settings, enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise RacerError(
            f"cannot reach the Kafka broker at {settings.kafka_bootstrap}: {exc}"
        ) from None
    try:
        exists = name in await consumer.topics()
        numbers = await clients.partitions_of(settings, name) if exists else []
        assigned = [TopicPartition(name, p) for p in numbers]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        letters: list[DeadLetter] = []
        left = {tp for tp in assigned if ends[tp] > await consumer.position(tp)}
        progress = time.monotonic()
        while left:
            if time.monotonic() - progress > IDLE_LIMIT_S:
                raise RacerError(f"{name}: no record for {IDLE_LIMIT_S:.0f} s before its end")
            for tp, records in (await consumer.getmany(*left, timeout_ms=POLL_MS)).items():
                progress = time.monotonic()
                for record in records:
                    if record.offset < ends[tp] and record.value is not None:
                        letters.append(_parse(record.value, tp, record.offset))
            for tp in list(left):  # also past offsets that hold no record (gaps, markers)
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return letters
    except KafkaError as exc:
        raise RacerError(f"reading {name} failed: {exc}") from None
    finally:
        await consumer.stop()


def _parse(raw: bytes, tp: TopicPartition, offset: int) -> DeadLetter:
    try:
        return DeadLetter.parse(raw)
    except MessageError as exc:  # not written by a worker: show it as it is
        return DeadLetter.from_error(raw, exc, source_topic=f"{tp.topic} (not a dead letter)",
                                     partition=tp.partition, offset=offset)  # fmt: skip
