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

What keeps that true when things go wrong (docs/reliability.md, "The consumer"):

- a record that cannot be decided yet never holds its batch: the handlers park it on a
  retry topic (kafka/retries.py), and this class reads that topic like any other;
- a handler error listed in ``retry_on`` (Redis unavailable) retries the batch with backoff;
  meanwhile the full in-flight window pauses the partitions and the consumer keeps polling,
  so it stays in its group instead of being dropped after ``max.poll.interval``;
- each batch remembers the assignment generation it was fetched in: a batch whose partitions
  changed hands since (a rebalance came before it finished) is not committed, so a late
  commit never moves the new owner's offset backwards;
- ``commit_failures_max`` failed commits in a row stop the worker, counted in a metric;
- a group without committed offsets starts only where an operator said (kafka/offsets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError
from mode import Service

from racer_online.errors import RacerError
from racer_online.kafka import clients, offsets
from racer_online.kafka.producer import BatchProducer, Outgoing
from racer_online.service import metrics
from racer_online.service.outages import OutageLog
from racer_online.settings import Settings

__all__ = ["BatchConsumer", "BatchProducer", "Outgoing", "Record"]
log = logging.getLogger(__name__)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Handler: TypeAlias = Callable[[Sequence[Record]], Awaitable[Sequence[Outgoing]]]
Fetched: TypeAlias = dict[TopicPartition, list[Record]]
MAX_FETCH_BYTES = 4 << 20  # per partition: room for the largest message the DLQ reports
FINISH_WAIT_S = 5.0  # for the batches in flight on a shutdown; on a rebalance see finish_wait_s
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # then 5 s until the handler goes through
POLL_WHILE_FULL_S = 1.0  # a paused consumer still polls this often: it stays in the group
DEFAULT_SESSION_TIMEOUT_S = 10.0  # aiokafka's; its rebalance timeout defaults to it
LAG_TIMEOUT_S = 5.0  # a scrape of /metrics must not hang on a broker that does not answer


class _OneLineStops(logging.Filter):
    """A consumer stopped by an error racer-online raises on purpose (a `RacerError`: no
    committed offsets, commits failing, Redis refusing for good) logs that error's line,
    without the traceback mode adds to every crash: the line says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RacerError):
            record.exc_info, record.exc_text = None, None
        return True


log.addFilter(_OneLineStops())  # the logger of every BatchConsumer (mode names it so)


class CommitsFailingError(RacerError):
    """Commits fail again and again: the worker stops rather than work on uncommitted."""


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
        retry_on: tuple[type[Exception], ...] = (),
        offset_reset: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings, self.topic, self.group_id, self.handle = settings, topic, group_id, handle
        self.producer = producer
        self.max_in_flight, self.retry_on = max_in_flight, retry_on
        # Where the group starts without committed offsets; None: RACER_OFFSET_RESET.
        self.offset_reset = offset_reset or settings.offset_reset
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Future[None] | None = None
        # Oldest first, each with the generation it was fetched in; only the current
        # generation's batches fill the window and wait for each other.
        self._in_flight: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.assignment: frozenset[TopicPartition] = frozenset()
        # Bumped by each revocation and assignment: a batch commits only in its fetch's.
        self.generation = 0
        self._commit_lock = asyncio.Lock()  # a revocation waits for a commit under way
        self._failed_commits = 0  # in a row
        self._outage = OutageLog(log, f"{self.label}: batches retried, partitions paused")
        rebalance_s = (settings.broker_rebalance_timeout_s or settings.broker_session_timeout_s
                       or DEFAULT_SESSION_TIMEOUT_S)  # fmt: skip
        # The revocation's wait must end well before the group gives up on this member.
        self.finish_wait_s = min(FINISH_WAIT_S, rebalance_s / 2)

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
            auto_offset_reset="none",  # where a group without offsets starts: offsets.py
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
        for task in (self._task, *(task for _, task in self._in_flight)):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()

    async def _consume(self) -> None:
        assert self.consumer is not None
        timeout_ms = int(self.settings.batch_timeout_s * 1000)
        while not self.should_stop:
            for entry in [e for e in self._in_flight if e[1].done()]:
                self._in_flight.remove(entry)
                await entry[1]  # a batch that failed stops the worker here
            if len(self._current()) >= self.max_in_flight:
                await self._wait_for_room()
                continue
            self.consumer.resume(*self.consumer.paused())
            self._start(await self._fetch(timeout_ms))

    def _current(self) -> list[asyncio.Future[None]]:
        """The batches in flight fetched in the current generation, oldest first. Older ones
        are never committed, so these need not wait for them after a rebalance."""
        return [task for generation, task in self._in_flight if generation == self.generation]

    def _start(self, fetched: Fetched) -> None:
        if fetched:
            current = self._current()
            previous = current[-1] if current else None
            batch = self._process(fetched, previous, self.generation)
            self._in_flight.append((self.generation, asyncio.ensure_future(batch)))

    async def _wait_for_room(self) -> None:
        """The in-flight window is full: wait for its oldest batch, and if that takes long
        (Redis down), pause the partitions and poll, which fetches nothing but keeps this
        member in its group."""
        assert self.consumer is not None
        done, _ = await asyncio.wait({self._current()[0]}, timeout=POLL_WHILE_FULL_S)
        if not done:
            self.consumer.pause(*self.consumer.assignment())
            # Records only if partitions were assigned meanwhile (a new assignment starts
            # unpaused): one batch more in flight, in order behind the others.
            self._start(await self._fetch(0))

    async def _fetch(self, timeout_ms: int) -> Fetched:
        assert self.consumer is not None
        try:
            fetched: Fetched = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.batch_size
            )
        except NoOffsetForPartitionError:
            # Place the partitions without a committed offset, or stop the worker.
            await offsets.start_uncommitted(self.consumer, self.topic, self.group_id,
                                            policy=self.offset_reset)  # fmt: skip
            return {}
        return fetched

    async def finish(self, timeout: float) -> None:
        """Wait, within ``timeout``, for the batches in flight to be handled and committed."""
        pending = [task for _, task in self._in_flight if not task.done()]
        if pending and (await asyncio.wait(pending, timeout=timeout))[1]:
            log.warning("%s: moving on with a batch in flight: it is redelivered", self.label)

    async def _process(
        self, fetched: Fetched, previous: Awaitable[None] | None, generation: int
    ) -> None:
        records = [r for batch in fetched.values() for r in batch]
        out = await self._handle_until_done(records, generation)
        if out is None:
            return  # its partitions moved on while it waited: their new owner redelivers it
        delivered = await self.producer.enqueue(out)
        if previous is not None:
            await previous  # commits in fetch order; raises if the previous one failed
        await delivered  # a failed send raises: the worker stops before a later commit
        await self._commit({tp: batch[-1].offset + 1 for tp, batch in fetched.items()},
                           generation)  # fmt: skip

    async def _handle_until_done(
        self, records: Sequence[Record], generation: int
    ) -> Sequence[Outgoing] | None:
        """The handler's messages; an error of ``retry_on`` retries with backoff, until the
        batch's partitions change hands (None)."""
        attempt = 0
        while generation == self.generation:
            try:
                out = await self.handle(records)
            except self.retry_on as exc:
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                metrics.BATCH_RETRIES.labels(self.topic, type(exc).__name__).inc()
                self._outage.failed(exc)  # logged once, and once more when it ends
                await asyncio.sleep(delay)
                attempt += 1
            else:
                self._outage.succeeded()
                return out
        return None

    async def _commit(self, positions: dict[TopicPartition, int], generation: int) -> None:
        assert self.consumer is not None
        async with self._commit_lock:
            if generation != self.generation:
                # Fetched before a rebalance: the partitions' owner since then (maybe this
                # worker again) read them from the group's offset, and may have committed more.
                metrics.SKIPPED_COMMITS.labels(self.topic).inc(len(positions))
                log.info("%s: not committing a batch fetched before a rebalance", self.label)
                return
            try:
                await self.consumer.commit(positions)
            except KafkaError as exc:
                self._commit_failed(exc)
            else:
                self._failed_commits = 0

    def _commit_failed(self, exc: KafkaError) -> None:
        """The batch is done; a later commit covers it, or it is redelivered. But a worker
        that never commits replays its whole run after a restart: stop after a few."""
        self._failed_commits += 1
        metrics.COMMIT_FAILURES.labels(self.topic).inc()
        limit = self.settings.commit_failures_max
        if self._failed_commits >= limit:
            raise CommitsFailingError(
                f"{self.label}: {limit} commits failed in a row, the last: {exc}"
            )
        log.warning("%s: batch not committed (%d in a row), may be redelivered: %s",
                    self.label, self._failed_commits, exc)  # fmt: skip

    async def revoke(self) -> None:
        """Before the partitions move: let the batches in flight finish and commit within
        ``finish_wait_s``, then close the generation so that no later commit goes out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.finish_wait_s
        await self.finish(self.finish_wait_s)
        left = max(deadline - loop.time(), 0.0)
        try:
            await asyncio.wait_for(self._commit_lock.acquire(), left or 0.01)
        except TimeoutError:  # rare: a commit unanswered for the whole wait
            log.warning("%s: a commit is still under way at the rebalance", self.label)
            self.generation += 1
        else:
            self.generation += 1
            self._commit_lock.release()

    def assign(self, assigned: set[TopicPartition]) -> None:
        """Take the group's new assignment: publish it (``/ready``, the
        ``racer_assigned_partition`` metric) and forget the partitions that moved away, so
        that this worker no longer reports their lag."""
        self.generation += 1
        metrics.REBALANCES.labels(self.topic).inc()
        for tp in self.assignment - assigned:
            for gauge in (metrics.ASSIGNED_PARTITION, metrics.CONSUMER_LAG):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))
        for tp in assigned:
            metrics.ASSIGNED_PARTITION.labels(tp.topic, str(tp.partition)).set(1)
        self.assignment = frozenset(assigned)
        log.info("%s: assigned partitions %s", self.label, sorted(tp.partition for tp in assigned))

    async def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition, records between the group's committed offset (or the
        first retained record, if none) and the partition's end, as the broker holds them;
        sets ``racer_consumer_lag``. Empty while the broker cannot say."""
        if self.consumer is None:
            return {}
        assigned = set(self.assignment)
        try:
            found = await asyncio.wait_for(offsets.lag(self.consumer, assigned), LAG_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            log.info("%s: lag unknown: %s", self.label, exc)
            return {}
        for tp, behind in found.items():
            if tp in self.assignment:  # not moved away meanwhile
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
        return found


class _FinishBatchesFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Let the batches in flight finish and commit before their partitions move, within a
    bound below the group's rebalance timeout (a batch that waits for Redis must not hold up
    the rebalance; if it is not done by then, it is not committed, and the partitions' next
    owner redelivers it)."""

    def __init__(self, batches: BatchConsumer) -> None:
        self.batches = batches

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.batches.revoke()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.batches.assign(assigned)
