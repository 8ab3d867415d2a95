"""The batch consumer's commit bookkeeping, without a broker: what a failed commit costs and
when the worker gives up. (The commits themselves are tested on the real broker in
tests/integration/test_batches.py; a broker refusing commits on purpose is not at hand.)"""

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import REGISTRY

from racer_online.kafka.batches import BatchConsumer, CommitsFailingError
from racer_online.settings import Settings

TP = TopicPartition("commits-topic", 0)


class Commits:
    """Stands in for the aiokafka consumer's ``commit``: fails while ``failing``."""

    def __init__(self) -> None:
        self.failing, self.done = True, []

    async def commit(self, offsets):
        if self.failing:
            raise CommitFailedError("the group has already rebalanced")
        self.done.append(offsets)


def failures() -> float:
    return REGISTRY.get_sample_value("racer_commit_failures_total", {"topic": TP.topic}) or 0.0


async def consumer(limit: int) -> tuple[BatchConsumer, Commits]:
    settings = Settings(_env_file=None, commit_failures_max=limit)
    batches = BatchConsumer(settings, TP.topic, "g", handle=None, producer=None)  # type: ignore[arg-type]
    batches.consumer = commits = Commits()  # type: ignore[assignment]
    return batches, commits


async def test_commit_failures_are_counted_and_the_nth_in_a_row_stops_the_consumer():
    batches, commits = await consumer(3)
    before = failures()
    for _ in range(2):
        await batches._commit({TP: 10}, batches.generation)
    assert failures() == before + 2
    commits.failing = False
    await batches._commit({TP: 20}, batches.generation)  # a success starts the count again
    commits.failing = True
    for _ in range(2):
        await batches._commit({TP: 30}, batches.generation)
    with pytest.raises(CommitsFailingError, match="3 commits failed in a row"):
        await batches._commit({TP: 30}, batches.generation)
    assert failures() == before + 5


async def test_a_batch_of_an_older_generation_is_not_committed():
    batches, commits = await consumer(3)
    commits.failing = False
    fetched_in = batches.generation
    batches.assign({TP})  # a rebalance since the fetch
    await batches._commit({TP: 10}, fetched_in)
    assert commits.done == []
    await batches._commit({TP: 10}, batches.generation)
    assert commits.done == [{TP: 10}]
