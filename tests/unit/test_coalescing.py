"""MicroBatcher: concurrent requests share one call of the batch function."""

import asyncio

import pytest

from racer_online.service.coalescing import MicroBatcher


class Recorder:
    def __init__(self, *, gate: asyncio.Event | None = None, fail: bool = False):
        self.batches: list[list[int]] = []
        self.gate, self.fail = gate, fail

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("redis said no")
        return [i * 10 for i in items]


async def test_requests_within_the_wait_share_one_batch_and_get_their_own_answers():
    handle = Recorder()
    batcher = MicroBatcher(handle, max_wait_s=0.01)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert answers == [0, 10, 20, 30, 40]
    assert handle.batches == [[0, 1, 2, 3, 4]]


async def test_a_full_batch_is_cut_at_once_and_the_rest_waits_for_the_next():
    handle = Recorder()
    batcher = MicroBatcher(handle, max_wait_s=10.0, max_size=3)
    first = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    assert await asyncio.gather(*first) == [0, 10, 20]  # no 10 s wait: the batch was full
    assert handle.batches == [[0, 1, 2]]


async def test_while_batches_are_in_flight_new_requests_fill_the_next_one():
    gate = asyncio.Event()
    handle = Recorder(gate=gate)
    batcher = MicroBatcher(handle, max_wait_s=0.001, max_in_flight=1)
    running = asyncio.ensure_future(batcher.submit(0))
    while not handle.batches:  # the first batch started and waits on the gate
        await asyncio.sleep(0)
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)  # well past max_wait_s: still one batch in flight
    assert handle.batches == [[0]]
    gate.set()
    assert await running == 0 and await asyncio.gather(*queued) == [10, 20, 30, 40, 50]
    assert handle.batches == [[0], [1, 2, 3, 4, 5]]


async def test_a_failed_batch_fails_each_of_its_callers():
    batcher = MicroBatcher(Recorder(fail=True), max_wait_s=0.001)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "redis said no" in str(r) for r in results)


async def test_a_caller_that_gave_up_does_not_stop_the_others():
    gate = asyncio.Event()
    handle = Recorder(gate=gate)
    batcher = MicroBatcher(handle, max_wait_s=0.001)
    gone, kept = (asyncio.ensure_future(batcher.submit(i)) for i in (1, 2))
    while not handle.batches:  # the batch holding both started, and waits on the gate
        await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    assert await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_drain_runs_what_is_queued():
    handle = Recorder()
    batcher = MicroBatcher(handle, max_wait_s=10.0)
    pending = asyncio.ensure_future(batcher.submit(7))
    await asyncio.sleep(0)
    await batcher.drain()
    assert await pending == 70
