"""Consumer lag as the broker sees it: end offsets minus the group's committed offsets.

Sampled every ``every`` seconds while a run goes on, summed over the topic's partitions (a
partition the group never committed counts from its start): what an operator's lag
exporter would read, independent of the worker's own ``racer_consumer_lag`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks._machine import percentile


class LagSampler:
    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, *,
                 every: float = 0.25) -> None:  # fmt: skip
        self.bootstrap, self.group, self.every = bootstrap, group, every
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)

    async def __aenter__(self) -> LagSampler:
        await self._admin.start()
        await self._ends.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._ends.stop()
        await self._admin.close()

    async def lag(self) -> int:
        committed = await self._admin.list_consumer_group_offsets(
            self.group, partitions=self.partitions
        )
        ends = await self._ends.end_offsets(self.partitions)
        done = {tp: meta.offset for tp, meta in committed.items() if meta is not None}
        return sum(max(0, ends[tp] - max(0, done.get(tp, 0))) for tp in self.partitions)

    async def _run(self) -> None:
        while True:
            self.samples.append(await self.lag())
            await asyncio.sleep(self.every)  # a sampling period, not a wait for an event

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"lag_p50": float("nan"), "lag_max": float("nan")}
        return {"lag_p50": percentile(self.samples, 50), "lag_max": float(max(self.samples))}
