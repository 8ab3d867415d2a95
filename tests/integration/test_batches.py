"""The batch consumer's commit order, in process, on the real embedded broker.

A batch is committed only after its sends are acknowledged and the batch before it is
committed; a batch that fails stops the consumer before any later commit; on a revocation
the batches in flight finish and commit before the partition moves. The handler here is a
script whose batches finish when the test says so; the committed offsets are read back
from the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from prometheus_client import REGISTRY

from racer_online.errors import RacerError, StoreUnavailableError
from racer_online.kafka import offsets
from racer_online.kafka.batches import BatchConsumer, BatchProducer, Outgoing, Record
from racer_online.kafka.offsets import NoCommittedOffsetsError
from racer_online.settings import Settings
from racer_online.testing import until

pytestmark = pytest.mark.integration

BATCH = 10
RECORDS = 30


class Script:
    """A handler: batch ``i`` (in call order) returns its records, copied to ``out``, once
    the test releases it (or at once if ``released``, except the ``held`` ones), or raises if
    ``i`` is in ``failing``."""

    def __init__(
        self, out: str, *, failing: Sequence[int] = (), released: bool = False,
        held: Sequence[int] = (),
    ):  # fmt: skip
        self.out, self.failing, self.released = out, set(failing), released
        self.held = set(held)
        self.offsets: list[list[int]] = []
        self.gates: dict[int, asyncio.Event] = {}

    def gate(self, index: int) -> asyncio.Event:
        return self.gates.setdefault(index, asyncio.Event())

    def release(self, index: int) -> None:
        self.gate(index).set()

    async def __call__(self, records: Sequence[Record]) -> list[Outgoing]:
        index = len(self.offsets)
        self.offsets.append([r.offset for r in records])
        if not self.released or index in self.held:
            await self.gate(index).wait()
        if index in self.failing:
            raise RuntimeError(f"batch {index} fails")
        return [(self.out, r.key, r.value) for r in records]


class Rig:
    """A one-partition input topic holding RECORDS records, an output topic, a group."""

    def __init__(self, broker):
        name = f"batches-{uuid.uuid4().hex[:12]}"
        self.bootstrap, self.group = broker.bootstrap, f"{name}.group"
        self.source, self.out = f"{name}.in", f"{name}.out"
        self.tp = TopicPartition(self.source, 0)
        self.settings = Settings(
            _env_file=None, kafka_broker=broker.url, app_id=name, batch_size=BATCH,
            fetch_max_wait_s=0.01, broker_session_timeout_s=2, broker_heartbeat_interval_s=0.5,
            broker_rebalance_timeout_s=2, offset_reset="earliest",
        )  # fmt: skip
        self.producer = BatchProducer(self.settings)
        self.consumers: list[BatchConsumer] = []

    async def start(self) -> None:
        await self._admin(
            lambda admin: admin.create_topics([NewTopic(t, 1, 1) for t in (self.source, self.out)])
        )
        await self._publish([(f"r{i}", f"k{i}") for i in range(RECORDS)])
        await self.producer.start()

    async def consumer(
        self, handle: Any, *, max_in_flight: int = 2, settings: Settings | None = None,
        retry_on: tuple[type[Exception], ...] = (),
    ) -> BatchConsumer:  # fmt: skip
        batches = BatchConsumer(
            settings or self.settings, self.source, self.group, handle, self.producer,
            max_in_flight=max_in_flight, retry_on=retry_on,
        )  # fmt: skip
        self.consumers.append(batches)
        await batches.start()
        return batches

    async def add_partition(self, *, records: int) -> None:
        """A second partition of the input topic, holding ``records`` records."""
        await self._admin(
            lambda admin: admin.create_partitions({self.source: NewPartitions(total_count=2)})
        )
        await self._publish([(f"added{i}", None) for i in range(records)], partition=1)

    async def _admin(self, request: Callable[[AIOKafkaAdminClient], Awaitable[Any]]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await request(admin)
        finally:
            await admin.close()

    async def _publish(
        self, records: list[tuple[str, str | None]], *, partition: int | None = None
    ) -> None:
        """(value, key) records to the input topic; stopping the producer flushes them."""
        async with AIOKafkaProducer(bootstrap_servers=self.bootstrap) as producer:
            for value, key in records:
                await producer.send(self.source, value.encode(),
                                    key=key and key.encode(), partition=partition)  # fmt: skip

    async def committed(self, tp: TopicPartition | None = None) -> int | None:
        """The group's committed offset, read from the broker by a client outside the group."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await reader.start()
        try:
            return await reader.committed(tp or self.tp)  # never joins: subscribes to nothing
        finally:
            await reader.stop()

    async def sent(self) -> list[bytes]:
        """Every value on the output topic so far."""
        consumer = AIOKafkaConsumer(
            self.out, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        await consumer.start()
        try:
            end = (await consumer.end_offsets([TopicPartition(self.out, 0)]))[
                TopicPartition(self.out, 0)
            ]
            got: list[bytes] = []
            while len(got) < end:
                fetched = await consumer.getmany(timeout_ms=500)
                got += [m.value for ms in fetched.values() for m in ms if m.value is not None]
            return got
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        for batches in self.consumers:
            with contextlib.suppress(Exception):
                await batches.stop()
        await self.producer.stop()


@pytest.fixture
async def rig(broker):
    made = Rig(broker)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def test_a_batch_is_committed_only_after_the_one_before_it(rig):
    script = Script(rig.out)
    await rig.consumer(script)
    await until(lambda: len(script.offsets) == 2, timeout=30, what="two batches in flight")
    assert script.offsets[:2] == [list(range(0, 10)), list(range(10, 20))]
    script.release(1)  # the second batch finishes first: its sends are acknowledged...
    await until(lambda: _count(rig.sent(), 10), timeout=30, what="the second batch's sends")
    assert await rig.committed() is None  # ...but it waits for the first one's commit
    script.release(0)
    await until(lambda: _is(rig.committed(), 20), timeout=30, what="both batches committed")
    script.release(2)
    await until(lambda: _is(rig.committed(), 30), timeout=30, what="the third batch committed")
    assert sorted(await rig.sent()) == sorted(f"r{i}".encode() for i in range(RECORDS))


async def test_a_failing_batch_stops_the_consumer_before_any_later_commit(rig):
    script = Script(rig.out, failing=[1])
    batches = await rig.consumer(script)
    script.release(0)
    await until(lambda: _is(rig.committed(), 10), timeout=30, what="the first batch committed")
    await until(lambda: len(script.offsets) == 3, timeout=30, what="the third batch in flight")
    script.release(2)  # the third batch's sends go out but it is never committed
    script.release(1)  # the middle batch raises
    await until(lambda: batches.crash_reason is not None, timeout=30, what="the consumer to stop")
    assert isinstance(batches.crash_reason, RuntimeError)
    assert await rig.committed() == 10
    await batches.stop()
    # The group's next consumer starts at the failed batch: nothing skipped.
    after = Script(rig.out, released=True)
    await rig.consumer(after)
    await until(lambda: _is(rig.committed(), 30), timeout=30, what="the rest committed")
    assert after.offsets[0][0] == 10


async def test_a_revocation_waits_for_the_batches_in_flight(rig):
    first = Script(rig.out)
    batches = await rig.consumer(first)
    await until(lambda: batches.assignment == {rig.tp}, timeout=30, what="the assignment")
    await until(lambda: len(first.offsets) == 2, timeout=30, what="two batches in flight")
    first.release(1)
    revoking = asyncio.Event()
    finish = batches.finish

    async def finish_on_revocation(timeout: float) -> None:
        if batches.assignment:  # a real revocation, not the first join's empty one
            revoking.set()
        await finish(timeout)

    batches.finish = finish_on_revocation  # type: ignore[method-assign]
    second = Script(rig.out, released=True)
    # It joins the group (its start returns once the group has rebalanced): the partition
    # is revoked from the first consumer, whose held batch finishes during the revocation.
    joining = asyncio.create_task(rig.consumer(second))
    await asyncio.wait_for(revoking.wait(), timeout=30)
    first.release(0)
    for index in range(2, 4):
        first.release(index)  # whatever the first consumer fetched before it moved
    await joining
    await until(lambda: _is(rig.committed(), 30), timeout=60, what="every record committed")
    handled = Counter(o for script in (first, second) for batch in script.offsets for o in batch)
    assert set(handled) == set(range(RECORDS))
    # What was in flight at the revocation was committed before the partition moved: its
    # new owner did not see it again (later records may come twice: at least once).
    assert all(handled[o] == 1 for o in range(20)), handled


async def _is(value, expected) -> bool:
    return await value == expected


async def _count(values, expected) -> bool:
    return len(await values) == expected


# -- at-least-once when things go wrong ------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_batch_that_changed_hands_is_never_committed_late(rig):
    """The first consumer holds its first batch through a rebalance: the partition's other
    owner commits everything meanwhile, and when the held batch ends, its commit would move
    the group's offset from 30 back to 10. It is skipped (counted) instead."""
    first = Script(rig.out, released=True, held=[0])
    batches = await rig.consumer(first)
    await until(lambda: len(first.offsets) >= 1, timeout=30, what="the first batch in flight")
    assert batches.finish_wait_s < rig.settings.broker_rebalance_timeout_s  # type: ignore[operator]
    skipped = sample("racer_skipped_commits_total", topic=rig.source)
    # A second member joins: the revocation gives up on the held batch within its bound;
    # whichever member gets the partition reads it from the group's offset and commits it all.
    other = await rig.consumer(Script(rig.out, released=True))
    await until(lambda: _is(rig.committed(), 30), timeout=60, what="the rest committed")
    await other.stop()  # the first consumer owns the partition again
    await until(lambda: batches.assignment == {rig.tp}, timeout=30, what="the partition back")
    handled_before = len(first.offsets)
    first.release(0)
    await until(lambda: sample("racer_skipped_commits_total", topic=rig.source) > skipped,
                timeout=30, what="the late commit skipped")  # fmt: skip
    assert await rig.committed() == 30
    # Before the generation check, the late commits set the offset back to 10, then 20, and
    # the first consumer handled records 20-29 a second time.
    assert [o for batch in first.offsets[handled_before:] for o in batch if o < 30] == []


async def test_lag_comes_from_the_broker_and_counts_partitions_never_committed(rig):
    held = Script(rig.out)  # nothing is committed until the test says so
    batches = await rig.consumer(held)
    await until(lambda: batches.assignment == {rig.tp}, timeout=30, what="the assignment")
    assert await batches.lag() == {rig.tp: RECORDS}
    assert sample("racer_consumer_lag", topic=rig.source, partition="0") == RECORDS
    for index in range(4):
        held.release(index)
    await until(lambda: _is(rig.committed(), RECORDS), timeout=30, what="everything committed")
    assert await batches.lag() == {rig.tp: 0}


async def test_a_group_without_offsets_starts_only_where_an_operator_said(rig):
    strict = rig.settings.model_copy(update={"offset_reset": "none"})
    script = Script(rig.out, released=True)
    batches = await rig.consumer(script, settings=strict)
    await until(lambda: batches.crash_reason is not None, timeout=30, what="the consumer to stop")
    assert isinstance(batches.crash_reason, NoCommittedOffsetsError)
    assert "racer-online offsets reset" in str(batches.crash_reason)
    assert script.offsets == [] and await rig.committed() is None
    await batches.stop()
    assert await offsets.reset(strict, rig.group, rig.source, to="latest") == {0: RECORDS}
    assert await rig.committed() == RECORDS  # nothing published so far is read again
    assert await offsets.reset(strict, rig.group, rig.source, to="earliest") == {0: 0}
    again = Script(rig.out, released=True)
    await rig.consumer(again, settings=strict)
    await until(lambda: _is(rig.committed(), RECORDS), timeout=30, what="everything committed")
    assert again.offsets[0][0] == 0


async def test_a_reset_is_refused_while_the_group_has_members(rig):
    batches = await rig.consumer(Script(rig.out, released=True))
    await until(lambda: batches.assignment == {rig.tp}, timeout=30, what="the assignment")
    # The refusal says why and what to do, the embedded broker's way out included.
    with pytest.raises(RacerError) as refused:
        await offsets.reset(rig.settings, rig.group, rig.source, to="earliest")
    why = str(refused.value)
    assert "consumer group " in why and " has live members, and a broker" in why
    assert "takes offsets from outside a group only while it is empty: stop every worker" in why
    assert "under a new RACER_APP_ID with RACER_OFFSET_RESET=earliest|latest" in why


async def test_a_partition_added_later_is_read_from_its_start(rig):
    strict = rig.settings.model_copy(update={"offset_reset": "none"})
    await offsets.reset(strict, rig.group, rig.source, to="earliest")
    batches = await rig.consumer(Script(rig.out, released=True), settings=strict)
    await until(lambda: _is(rig.committed(), RECORDS), timeout=30, what="partition 0 committed")
    await batches.stop()
    await rig.add_partition(records=5)  # no committed offset: its group has committed others
    restarted = await rig.consumer(Script(rig.out, released=True), settings=strict)
    added = TopicPartition(rig.source, 1)
    await until(lambda: _is(rig.committed(added), 5), timeout=60, what="partition 1 committed")
    assert restarted.crash_reason is None


async def test_a_transient_error_pauses_the_partitions_and_retries_the_batch(rig):
    down = asyncio.Event()
    down.set()
    calls = Counter[int]()

    async def flaky(records: Sequence[Record]) -> list[Outgoing]:
        calls[records[0].offset] += 1
        if down.is_set():
            raise StoreUnavailableError("redis unavailable: test outage")
        return [(rig.out, r.key, r.value) for r in records]

    batches = await rig.consumer(flaky, retry_on=(StoreUnavailableError,))
    await until(lambda: batches.consumer.paused() == {rig.tp}, timeout=30,
                what="the partition paused")  # fmt: skip
    assert await rig.committed() is None and await rig.sent() == []
    assert batches.assignment == {rig.tp}  # still a member: it polls while paused
    down.clear()
    await until(lambda: _is(rig.committed(), RECORDS), timeout=60, what="everything committed")
    assert batches.consumer.paused() == set()
    assert max(calls.values()) >= 2  # retried, not skipped
    assert sorted(await rig.sent()) == sorted(f"r{i}".encode() for i in range(RECORDS))
