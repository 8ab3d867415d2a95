"""Coalesce concurrent single requests into batches: the HTTP decision path's Redis economy.

A Kafka fetch hands the service hundreds of queries at once, so one Redis round trip serves
them all. An HTTP request carries one. `MicroBatcher` collects the requests that arrive
within ``max_wait_s`` of the first (or until ``max_size``) and hands them to one call of
the batch function, so concurrent requests share a round trip as a fetch's records do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """``await submit(item)`` returns ``handle([..., item, ...])``'s answer for ``item``.

    The first item of a batch waits at most ``max_wait_s`` for others; a batch is cut at
    ``max_size``. While ``max_in_flight`` batches run, new items queue for the next one,
    which is then as full as the traffic makes it. An exception of ``handle`` reaches
    every caller of its batch.
    """

    def __init__(
        self,
        handle: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_wait_s: float = 0.001,
        max_size: int = 500,
        max_in_flight: int = 2,
    ) -> None:
        self._handle = handle
        self.max_wait_s, self.max_size, self.max_in_flight = max_wait_s, max_size, max_in_flight
        self._in_flight = 0
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._due = False  # the first queued item has waited max_wait_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._waiters.append(future)
        if len(self._items) >= self.max_size:
            self._due = True
            self._cut()
        elif self._timer is None and not self._due:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._expire)
        return await future

    def _expire(self) -> None:
        self._timer, self._due = None, True
        self._cut()

    def _cut(self) -> None:
        """Start the queued batch, if it is due and a slot is free (else when one frees)."""
        if not (self._due and self._items) or self._in_flight >= self.max_in_flight:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, waiters = self._items[: self.max_size], self._waiters[: self.max_size]
        del self._items[: self.max_size], self._waiters[: self.max_size]
        self._due = len(self._items) >= self.max_size
        if self._items and not self._due:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._expire)
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(items, waiters))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[T], waiters: list[asyncio.Future[R]]) -> None:
        try:
            answers = await self._handle(items)
        except Exception as exc:  # every caller of the batch gets it
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for waiter, answer in zip(waiters, answers, strict=True):
                if not waiter.done():  # a caller that gave up (its request closed) is skipped
                    waiter.set_result(answer)
        finally:
            self._in_flight -= 1
            self._cut()

    async def drain(self) -> None:
        """Run what is queued and wait for every batch in flight (on shutdown)."""
        while self._items or self._tasks:
            self._due = True
            self._cut()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
