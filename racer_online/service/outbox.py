"""The leader's outbox: what Redis holds is the truth, the thresholds and alerts topics catch up.

The leader stores a threshold or an alert first (a fenced write) and publishes it after. A
send that fails, or a leader that dies between the two, would leave the topic without it for
good, so publishing is driven by what Redis holds instead of by what a tick computed. Per
scope, ``racer:{scope}:outbox`` marks how far the topics acknowledged: ``threshold``, the
last version published, and ``alert``, the id of the last alert published (an entry of the
scope's alerts stream). Every leader tick publishes the newest stored threshold if its
version is past the mark (an older unsent one is superseded, never sent) and every alert
after the mark, oldest first, and moves the marks once the broker acknowledged them all.

One send is in flight at a time. The producer is idempotent: it retries a send until the
broker takes it and the broker drops the copies a retry makes, so a tick that finds the
send still unacknowledged (the broker is down) leaves it be instead of sending again; a
send that failed for good is sent again at the next tick. A leader that dies after the
acknowledgement and before the marks moved leaves them to its successor, which publishes
those once more: at least once, deduplicated downstream by (scope, version) and by
(scope, kind, at) (docs/architecture.md, "Topics").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from racer_online.errors import FencedError
from racer_online.messages import ThresholdMessage
from racer_online.service import metrics
from racer_online.service.lease import LeaderLease
from racer_online.settings import Settings
from racer_online.store import Store

log = logging.getLogger(__name__)
Outgoing: TypeAlias = tuple[str, bytes | None, bytes]  # topic, key, value
# Queues records on the producer; the future completes once the broker acknowledged them all.
Enqueue: TypeAlias = Callable[[Sequence[Outgoing]], Awaitable["asyncio.Future[Any]"]]
MAX_ALERTS = 100  # per scope and send; the rest follow at the next ticks
NOTHING_SENT = "0-0"  # the alert mark before a scope's first alert


@dataclass(frozen=True)
class Unsent:
    """What one scope's topics miss of what Redis holds, under the epoch it was read in."""

    scope: str
    epoch: int
    threshold: ThresholdMessage | None = None
    alerts: list[tuple[str, bytes]] = field(default_factory=list)  # (stream id, json)

    def __len__(self) -> int:
        return (self.threshold is not None) + len(self.alerts)

    def marks(self) -> dict[str, str]:
        """The outbox marks once this is acknowledged."""
        marks = {"alert": self.alerts[-1][0]} if self.alerts else {}
        if self.threshold is not None:
            marks["threshold"] = str(self.threshold.version)
        return marks


class Outbox:
    def __init__(self, settings: Settings, store: Store, lease: LeaderLease) -> None:
        self.topics = settings.topics
        self.store = store
        self.lease = lease  # the scopes this worker leads, each under its epoch
        self._in_flight: tuple[list[Unsent], asyncio.Task[None]] | None = None

    @property
    def sending(self) -> bool:
        """A send is under way: the broker has not answered it yet."""
        return self._in_flight is not None and not self._in_flight[1].done()

    async def open(self, scope: str, *, epoch: int) -> None:
        """A new leader's first look: a scope without an alert mark (an older version stored
        its alerts and published them as it went) starts after its newest alert."""
        await self.store.start_outbox(scope, epoch=epoch)

    async def publish(self, enqueue: Enqueue, *, wait_s: float) -> int:
        """Send what the led scopes' topics miss, waiting at most ``wait_s`` for the broker;
        the number of records sent now (0 while an earlier send is still unacknowledged)."""
        if self._in_flight is not None:
            sent, task = self._in_flight
            if not task.done():
                return 0  # the producer retries it until the broker takes it
            self._in_flight = None
            await self._settle(sent, task)
        unsent = [u for u in await self.unsent() if len(u)]
        if not unsent:
            return 0
        t, a = self.topics.thresholds, self.topics.alerts
        records: list[Outgoing] = []
        for u in unsent:
            key = u.scope.encode()
            records += [(t, key, u.threshold.to_bytes())] if u.threshold is not None else []
            records += [(a, key, raw) for _, raw in u.alerts]
        task = asyncio.create_task(_sent(enqueue, records))
        self._in_flight = (unsent, task)
        await asyncio.wait([task], timeout=wait_s)
        if task.done():
            self._in_flight = None
            await self._settle(unsent, task)
        return len(records)

    async def unsent(self) -> list[Unsent]:
        """Per scope this worker leads: the newest stored threshold if its version is past
        the mark, and the alerts after the mark (sets ``racer_outbox_unsent``)."""
        found = []
        for scope, epoch in list(self.lease.epochs.items()):
            marks = await self.store.load_outbox(scope)
            raw = await self.store.load_threshold(scope)
            threshold = ThresholdMessage.parse(raw) if raw is not None else None
            if threshold is not None and threshold.version <= int(marks.get("threshold", 0)):
                threshold = None
            after = marks.get("alert", NOTHING_SENT)
            alerts = await self.store.alerts_after(scope, after, count=MAX_ALERTS)
            found.append(Unsent(scope, epoch, threshold, alerts))
            metrics.OUTBOX_UNSENT.labels(scope).set(len(found[-1]))
        return found

    async def _settle(self, sent: list[Unsent], task: asyncio.Task[None]) -> None:
        """Move the marks of an acknowledged send; a failed one is sent again next tick."""
        failed = task.exception()
        if failed is not None:
            metrics.OUTBOX_SEND_FAILURES.inc()
            log.warning("thresholds and alerts not published, sent again at the next tick: %s",
                        failed)  # fmt: skip
            return
        for u in sent:
            try:
                await self.store.save_outbox(u.scope, u.marks(), epoch=u.epoch)
            except FencedError as refused:  # the new leader publishes them again
                self.lease.fenced(u.scope, refused)
                continue
            metrics.OUTBOX_UNSENT.labels(u.scope).set(0)


async def _sent(enqueue: Enqueue, records: Sequence[Outgoing]) -> None:
    acknowledged = await enqueue(records)
    await acknowledged
