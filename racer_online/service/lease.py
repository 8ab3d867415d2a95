"""The leader's lease, per scope: which scopes this worker may write, under which epoch.

Leadership comes from Faust's own consumer group, which knows nothing of Redis: a leader cut
off from Kafka, or stalled, may still run after the group elected another. So each scope has
a lease in the store (``racer:{scope}:lease``, ``leader_lease_s`` long, renewed every tick)
and an epoch that grows with every new holder. Every leader write carries the epoch and the
store refuses a superseded one inside the write's own script (`FencedError`), so only the
current holder's writes land. A refused write, or a lease found taken, makes this worker
step down for the scope: one log line, ``racer_leader_fenced_total`` for a refused write.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import NamedTuple

from racer_online.errors import FencedError
from racer_online.service import metrics
from racer_online.store import Store

log = logging.getLogger(__name__)


class Held(NamedTuple):
    epoch: int  # write under it
    new: bool  # not the epoch this worker held before: what it knows of the scope is stale


def worker_id() -> str:
    """Who holds a lease, as an operator reads it: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLease:
    def __init__(self, store: Store, *, ttl_s: float, holder: str | None = None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.holder = holder or worker_id()
        self.epochs: dict[str, int] = {}  # scope -> the epoch this worker leads it under

    async def hold(self, scope: str, *, incarnation: int) -> Held | None:
        """Take the scope's lease or renew it; None while another worker holds it. Raises
        `StateLostError` if Redis' state of the scope is not ``incarnation``."""
        last = self.epochs.get(scope)
        lease = await self.store.hold_lease(
            scope, self.holder, ttl_s=self.ttl_s, last_epoch=last, incarnation=incarnation
        )
        if lease.holder != self.holder:
            if last is not None:
                self._step_down(scope, f"{lease.holder} holds the lease (epoch {lease.epoch})")
            return None
        self.epochs[scope] = lease.epoch
        metrics.LEADER_EPOCH.labels(scope).set(lease.epoch)
        if lease.epoch != last:
            log.info("scope %s: leading under lease epoch %d", scope, lease.epoch)
        return Held(lease.epoch, lease.epoch != last)

    def fenced(self, scope: str, refused: FencedError) -> None:
        """The store refused a write of this worker: another one leads the scope now."""
        metrics.LEADER_FENCED.labels(scope).inc()
        self._step_down(scope, f"a write was refused ({refused})")

    def forget(self, scope: str) -> None:
        """Redis lost the scope's state, the lease and its epoch with it."""
        if scope in self.epochs:
            self._step_down(scope, "Redis lost the scope's state")

    async def release(self) -> None:
        """Give every lease back (leadership moved, or a stop), so that the next leader
        need not wait for them to lapse."""
        for scope, epoch in list(self.epochs.items()):
            try:
                await self.store.release_lease(scope, self.holder, epoch=epoch)
            finally:  # unreleased (Redis down), it lapses on its own: this worker is done
                self._step_down(scope, "gave the lease up", level=logging.INFO)

    def _step_down(self, scope: str, why: str, *, level: int = logging.WARNING) -> None:
        self.epochs.pop(scope, None)
        metrics.LEADER_EPOCH.labels(scope).set(0)
        log.log(level, "scope %s: no longer the leader: %s", scope, why)
