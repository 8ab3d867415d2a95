"""A consumer group's offsets as the broker holds them: where a group without committed
offsets starts, its lag, and the operator's reset.

A group that finds no committed offset for any partition of a topic is new, or renamed
(``RACER_APP_ID`` changed), or its offsets expired (``offsets.retention.minutes`` after the
group went empty). The broker cannot tell these apart, and reading from the earliest
record would decide again every query the log still holds, past the pending records' TTL.
So the worker starts there only when ``RACER_OFFSET_RESET`` says where, or after
``racer-online offsets reset`` committed a start; otherwise it stops with one line. A
partition without an offset in a group that committed the topic's other partitions is a
partition added since: it is read from its start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from racer_online.errors import RacerError
from racer_online.kafka import clients
from racer_online.settings import Settings

log = logging.getLogger(__name__)
Where = Literal["earliest", "latest"]


class NoCommittedOffsetsError(RacerError):
    """A group with no committed offset on a topic, and no setting saying where to start."""


def input_groups(settings: Settings) -> dict[str, str]:
    """The consumer group of each input topic: ``<app id>.route``, ``<app id>.feedback``."""
    t = settings.topics
    return {t.queries: f"{settings.app_id}.route", t.feedback: f"{settings.app_id}.feedback"}


def retry_groups(settings: Settings) -> dict[str, str]:
    """The consumer group of each retry topic (kafka/retries.py). A retry topic holds only
    records owed a decision, so a group without committed offsets reads it from its start."""
    t = settings.topics
    return {t.queries_retry: f"{settings.app_id}.route-retry",
            t.feedback_retry: f"{settings.app_id}.feedback-retry"}  # fmt: skip


async def start_uncommitted(
    consumer: AIOKafkaConsumer, topic: str, group: str, *, policy: str
) -> None:
    """Place every assigned partition of ``topic`` without a committed offset: from its start
    if the group committed another partition of the topic (a partition added since),
    else where ``policy`` says (``earliest``, ``latest``); ``none`` raises."""
    assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
    committed = await group_offsets(consumer, topic)
    missing = [tp for tp in assigned if committed.get(tp) is None]
    if not missing:
        return
    if any(offset is not None for offset in committed.values()):
        log.warning("%s: partitions %s have no committed offset (added since?): read from "
                    "their start", group, _numbers(missing))  # fmt: skip
        await consumer.seek_to_beginning(*missing)
    elif policy == "earliest":
        log.warning("%s: no committed offsets on %s: starting from the earliest record "
                    "(RACER_OFFSET_RESET=earliest)", group, topic)  # fmt: skip
        await consumer.seek_to_beginning(*missing)
    elif policy == "latest":
        log.warning("%s: no committed offsets on %s: starting after the latest record "
                    "(RACER_OFFSET_RESET=latest)", group, topic)  # fmt: skip
        await consumer.seek_to_end(*missing)
    else:
        raise NoCommittedOffsetsError(
            f"consumer group {group} has no committed offsets on {topic}: a new deployment, "
            "a renamed RACER_APP_ID or expired offsets; say where to start with "
            "`racer-online offsets reset --to earliest|latest` (or RACER_OFFSET_RESET)"
        )


async def group_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int | None]:
    """The group's committed offset of every partition of ``topic`` (None: never)."""
    numbers = consumer.partitions_for_topic(topic) or set()
    return {tp: await consumer.committed(tp) for tp in (TopicPartition(topic, p) for p in numbers)}


async def lag(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Records between the group's committed offset and the end of each partition, as the
    broker holds them; a partition never committed counts from its first retained record."""
    tps = list(partitions)
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    out = {}
    for tp in tps:
        done = await consumer.committed(tp)
        out[tp] = max(ends[tp] - (starts[tp] if done is None else done), 0)
    return out


async def reset(settings: Settings, group: str, topic: str, *, to: Where) -> dict[int, int]:
    """Commit the start (``earliest``) or the end (``latest``) of every partition of
    ``topic`` for ``group``, whose members must all be stopped; returns partition: offset."""
    await clients.check_reachable(settings)
    consumer = clients.consumer(settings, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        numbers = await clients.partitions_of(settings, topic)
        if not numbers:
            raise RacerError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in numbers]
        consumer.assign(tps)
        found = await (consumer.beginning_offsets if to == "earliest" else consumer.end_offsets)(
            tps
        )
        await consumer.commit(found)
    except CommitFailedError:
        raise RacerError(
            f"consumer group {group} has live members, and a broker takes offsets from outside "
            "a group only while it is empty: stop every worker of RACER_APP_ID, then reset; the "
            "embedded broker may keep a stopped worker's member for good, so there start the "
            "workers under a new RACER_APP_ID with RACER_OFFSET_RESET=earliest|latest instead"
        ) from None
    except KafkaError as exc:
        raise RacerError(f"resetting {group} on {topic} failed: {exc}") from None
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in found.items()}


@dataclass(frozen=True)
class PartitionOffsets:
    """Where a group stands on one partition, as the broker holds it."""

    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    end: int
    lag: int  # end minus committed; a partition never committed counts from its start


async def show(settings: Settings) -> list[PartitionOffsets]:
    """The committed offset, the end and the lag of every partition of each input topic,
    per group; read by an admin client, so the groups' live members are not disturbed."""
    await clients.check_reachable(settings)
    admin = clients.admin(settings)
    reader = clients.consumer(settings, group_id=None, enable_auto_commit=False)
    rows: list[PartitionOffsets] = []
    try:
        await admin.start()
        await reader.start()
        for topic, group in input_groups(settings).items():
            tps = [TopicPartition(topic, p) for p in await clients.partitions_of(settings, topic)]
            if not tps:
                continue
            held = await admin.list_consumer_group_offsets(group, partitions=tps)
            ends, starts = await reader.end_offsets(tps), await reader.beginning_offsets(tps)
            for tp in tps:
                mark = held.get(tp)
                committed = mark.offset if mark is not None and mark.offset >= 0 else None
                since = starts[tp] if committed is None else committed
                rows.append(PartitionOffsets(group, topic, tp.partition, committed, ends[tp],
                                             max(ends[tp] - since, 0)))  # fmt: skip
    except KafkaError as exc:
        raise RacerError(f"reading the groups' offsets failed: {exc}") from None
    finally:
        await reader.stop()
        await admin.close()
    return rows


def _numbers(tps: Iterable[TopicPartition]) -> list[int]:
    return sorted(tp.partition for tp in tps)
