"""Park a record that cannot be decided yet on a retry topic, off the hot path.

A query of a scope this worker does not know (a tenant not configured yet, a rolling deploy
under way) or a query with text and no router here may be decidable later, by an upgraded
worker. Holding its batch until then would hold every other record of the fetch, every
partition and every scope (head-of-line blocking), so the record is parked instead, as
Uber's delayed retry topics and Confluent's retry topic do (docs/architecture.md, "Batch
consumers"): it is written to ``<input>.retry`` wrapped with when this worker first saw it,
and the input batch commits once that write is acknowledged. The same worker reads the
retry topic in its own group, waits until each record is due (``RACER_RETRY_DELAY_S``),
and tries again: decided, parked once more, or dead-lettered once it has waited
``RACER_UNKNOWN_SCOPE_GRACE_S`` since it was first seen. That clock is the worker's own: a
producer's timestamp is never trusted (one ten years ahead would never expire).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from racer_online.kafka.batches import Outgoing, Record
from racer_online.messages import Message, MessageError


class ParkedMessage(Message):
    """A record on a retry topic: the original, where it came from, and its clock."""

    source_topic: str
    partition: int
    offset: int
    raw: str  # the original value (it parsed, so it is UTF-8 JSON)
    error_class: str  # why it waits, as its dead letter will say
    reason: str
    first_seen: float  # the worker's clock when a worker first read it from its input
    due: float  # when to try it again
    attempts: int = 1


@dataclass(frozen=True)
class Seen:
    """A record as a handler takes it: the original, and when a worker first read it."""

    record: Record
    first_seen: float


def fresh(records: Sequence[Record], clock: Callable[[], float] = time.time) -> list[Seen]:
    """Records read from an input topic: first seen now."""
    now = clock()
    return [Seen(record, now) for record in records]


def park(topic: str, seen: Seen, error_class: str, reason: str, *, delay_s: float,
         attempts: int = 1, clock: Callable[[], float] = time.time) -> Outgoing:  # fmt: skip
    """The message that parks ``seen`` on ``topic``, under the original key."""
    record = seen.record
    parked = ParkedMessage(
        source_topic=record.topic, partition=record.partition, offset=record.offset,
        raw=record.value.decode(), error_class=error_class, reason=reason,
        first_seen=seen.first_seen, due=clock() + delay_s, attempts=attempts,
    )  # fmt: skip
    return (topic, record.key, parked.to_bytes())


def unpark(record: Record) -> tuple[Seen, ParkedMessage]:
    """The original record of a parked one; raises `MessageError` if it is not one."""
    parked = ParkedMessage.parse(record.value) if record.value is not None else None
    if parked is None:
        raise MessageError("a record of a retry topic with no value")
    value = parked.raw.encode()
    original = ConsumerRecord(
        topic=parked.source_topic, partition=parked.partition, offset=parked.offset,
        timestamp=record.timestamp, timestamp_type=record.timestamp_type, key=record.key,
        value=value, checksum=None, serialized_key_size=len(record.key or b""),
        serialized_value_size=len(value), headers=(),
    )  # fmt: skip
    return Seen(original, parked.first_seen), parked


async def until_due(parked: Sequence[ParkedMessage], *, limit_s: float,
                    clock: Callable[[], float] = time.time) -> None:  # fmt: skip
    """Wait until every record of a batch is due, at most ``limit_s`` (the retry delay: a
    clock set back, or a record parked with another delay, waits no longer than that). A
    partition of a retry topic is in due order, so waiting on a batch holds back nothing
    that is due sooner."""
    if parked:
        wait = min(max(p.due for p in parked) - clock(), limit_s)
        if wait > 0:
            await asyncio.sleep(wait)
