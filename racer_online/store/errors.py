"""Redis errors as the worker must treat them: an outage to ride out, or a failure."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from racer_online.errors import (
    FencedError,
    StateLostError,
    StoreFailedError,
    StoreUnavailableError,
)

P = ParamSpec("P")
T = TypeVar("T")


# Errors that the same call outlives: the server is down, loading its data, out of memory
# (maxmemory with noeviction), read-only, or a cluster is re-electing. Read-only: on one
# server or Sentinel the connection drops itself on READONLY (store/primary.py), so it
# arrives as a ConnectionError and the next call opens a new connection (to the new primary,
# with Sentinel); on a Cluster, a replica after a failover until the slot map moves on.
TRANSIENT = (
    RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError, ReadOnlyError,
    ClusterDownError, TryAgainError,
)  # fmt: skip
# A long script, a restart, a replica's broken link to its primary, and a primary set to
# refuse writes without enough replicas in sync (min-replicas-to-write) while they are away.
TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS")
PIPELINED = " of pipeline caused error: "
FENCED_REPLY = "FENCED"  # fence.lua: a leader write under a superseded lease epoch
# incarnation.lua: the caller's memory of a scope comes from a state Redis no longer holds
INCARNATION_REPLY = re.compile(r"INCARNATION (\d+) racer:\{(.*)\}:incarnation ")


def classified(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis errors as the worker must treat them: `StoreUnavailableError` (retry later,
    no crash), `StoreFailedError` (stop: retrying the same batch fails again) or
    `FencedError` (a leader write refused: the leader steps down) or `StateLostError`
    (Redis lost the scope's state: the caller resets it and retries)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except TRANSIENT as exc:
            raise StoreUnavailableError(f"redis unavailable: {_one_line(exc)}") from exc
        except ResponseError as exc:
            reply = str(exc).split(PIPELINED, 1)[-1]  # redis-py prefixes a pipeline's errors
            lost = INCARNATION_REPLY.search(reply)
            if lost:
                raise StateLostError(lost[2], int(lost[1]), _one_line(exc)) from exc
            if reply.startswith(FENCED_REPLY):
                raise FencedError(_one_line(exc)) from exc
            if reply.startswith(TRANSIENT_REPLIES):
                raise StoreUnavailableError(f"redis busy: {_one_line(exc)}") from exc
            raise StoreFailedError(f"redis refused a command: {_one_line(exc)}") from exc

    return wrapper


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
