"""The Redis store: one Lua call per scope and batch, so several keys change together."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from racer_online.settings import Settings
from racer_online.store import keys
from racer_online.store.base import (
    FeedbackOutcome,
    LabelWrite,
    Lease,
    PendingWrite,
    RouteResult,
    StoreConfig,
    SweepResult,
    WindowEntry,
    redelivery_search,
)
from racer_online.store.codec import candidate_keys, label_masks, new_record, window_entry
from racer_online.store.connection import AsyncRedis, connect, redis_options, redis_retry
from racer_online.store.errors import classified
from racer_online.store.records import PendingRecord, mask_width, query_hash

log = logging.getLogger(__name__)
W = TypeVar("W", PendingWrite, LabelWrite)
# A Lua call blocks Redis for 20-35 us of CPU per record (docs/benchmarks.md): at most 100
# records per call keep every other client's wait within a few ms, whatever the batch size.
MAX_SCRIPT_RECORDS = 100
# route.lua: after the query's hash, its slot, horizon end and slots to search back
ROUTE_ITEM = struct.Struct("<IdI")
OUTCOMES = {outcome.value[0]: outcome for outcome in FeedbackOutcome}  # feedback.lua's letters


# The leader's write scripts: fence.lua comes first, so each takes the scope's epoch counter
# as its last key and the writer's epoch as its last argument.
FENCED_SCRIPTS = ("save_threshold.lua", "sweep.lua", "fenced_write.lua", "reset_scope.lua")


# The scripts that act on a worker's memory of a scope check its incarnation first.
CHECKED_SCRIPTS = ("route.lua", "feedback.lua", "lease.lua", "current.lua")


def _lua(name: str) -> str:
    source = files("racer_online.store").joinpath("lua", name).read_text()
    if name in ("route.lua", "feedback.lua"):
        return _lua("incarnation.lua") + _lua("common.lua") + source
    if name in CHECKED_SCRIPTS:
        return _lua("incarnation.lua") + source
    if name in FENCED_SCRIPTS:
        return _lua("fence.lua") + source
    return source


class RedisStore:
    def __init__(
        self, client: AsyncRedis, config: StoreConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock  # picks the slots feedback searches and the held labels' slot
        for models in config.catalogues.values():
            mask_width(len(models))  # refuses a catalogue the record cannot hold
        self._route = client.register_script(_lua("route.lua"))
        self._feedback = client.register_script(_lua("feedback.lua"))
        self._save = client.register_script(_lua("save_threshold.lua"))
        self._sweep = client.register_script(_lua("sweep.lua"))
        self._fenced = client.register_script(_lua("fenced_write.lua"))
        self._reset = client.register_script(_lua("reset_scope.lua"))
        self._lease = client.register_script(_lua("lease.lua"))
        self._release = client.register_script(_lua("release_lease.lua"))
        self._current = client.register_script(_lua("current.lua"))

    @classmethod
    def from_settings(cls, settings: Settings, config: StoreConfig) -> RedisStore:
        """The configured Redis, with its credentials, TLS and timeouts."""
        return cls.from_url(
            settings.redis_url,
            config,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=redis_retry(settings),
            **redis_options(settings),
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        config: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> RedisStore:
        """``options``: redis-py connection options, e.g. from `redis_options`."""
        return cls(connect(url, decode_responses=False, **options), config, clock=clock)

    def _slot(self, at: float) -> int:
        return int(at // self.config.slot_s)

    async def pending_records(
        self, scope: str, query_ids: Sequence[str]
    ) -> list[tuple[str, PendingRecord] | None]:
        """The key and record of each query (None: none stored), searched in every live
        slot. For tests and tools: the worker never reads a record outside a script."""
        slots: Any = await self.client.hgetall(keys.slots(scope))
        n_models = len(self.config.catalogues[scope])
        found: list[tuple[str, PendingRecord] | None] = []
        for query_id in query_ids:
            hash_, candidates = candidate_keys(scope, query_id, slots)
            hit = None
            for key in candidates:
                value: Any = await self.client.hget(key, hash_)
                if value is not None:
                    hit = (key, PendingRecord.unpack(value, n_models))
                    break
            found.append(hit)
        return found

    async def _per_scope(
        self, script: AsyncScript, items: Sequence[W], args: Callable[[W], list[Any]]
    ) -> list[tuple[list[int], Any]]:
        """Script calls of at most `MAX_SCRIPT_RECORDS` records, each within one scope:
        (positions in ``items``, reply). A scope's calls run in order, since the first
        decision and the first label of a query win. On one server every call shares a
        pipeline; on a Cluster each scope's calls go to its shard, scopes concurrently
        (redis-py's cluster pipeline does not load a script that a node lacks)."""
        by_scope: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_scope[item.scope].append(i)
        calls: dict[str, list[tuple[list[int], list[str], list[Any]]]] = defaultdict(list)
        cfg, now = self.config, self.clock()
        for scope, rows in by_scope.items():
            # A scope's items of one batch come from one memory of it: one incarnation.
            head: list[Any] = [
                repr(cfg.pending_ttl_s), cfg.window_size, len(cfg.catalogues[scope]),
                repr(cfg.slot_s), keys.pending(scope), keys.held(scope), repr(cfg.held_ttl_s),
                cfg.min_buckets, repr(now), items[rows[0]].incarnation,
            ]  # fmt: skip
            scope_keys: list[str] = [
                keys.window(scope), keys.upper_bound(scope), keys.audits(scope),
                keys.slots(scope), keys.incarnation(scope),
            ]  # fmt: skip
            for start in range(0, len(rows), MAX_SCRIPT_RECORDS):
                chunk = rows[start : start + MAX_SCRIPT_RECORDS]
                calls[scope].append(
                    (chunk, scope_keys, head + [a for i in chunk for a in args(items[i])])
                )
        if isinstance(self.client, RedisCluster):

            async def in_order(scope: str) -> list[Any]:
                return [await script(keys=k, args=a) for _, k, a in calls[scope]]

            replies = [r for rs in await asyncio.gather(*map(in_order, calls)) for r in rs]
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for scope_calls in calls.values():
                    for _, k, a in scope_calls:
                        await script(keys=k, args=a, client=pipe)
                replies = await pipe.execute() if calls else []
        chunks = [chunk for scope_calls in calls.values() for chunk, _, _ in scope_calls]
        return list(zip(chunks, replies, strict=True))

    @classified
    async def route(self, writes: Sequence[PendingWrite]) -> list[RouteResult]:
        def args(w: PendingWrite) -> list[Any]:
            # One argument per record (redis-py encodes each in Python).
            record = new_record(w, len(self.config.catalogues[w.scope]))
            due = w.decided_at + self.config.pending_ttl_s
            count, beyond[id(w)] = redelivery_search(w, self.config, now)
            item = ROUTE_ITEM.pack(self._slot(w.decided_at), due, count)
            return [query_hash(w.query_id) + item + record]

        now, beyond = self.clock(), dict[int, bool]()  # by write: its first may be gone

        results: list[Any] = [None] * len(writes)
        for rows, (codes, *firsts) in await self._per_scope(self._route, writes, args):
            stored_before = iter(firsts)
            for i, code in zip(rows, codes.decode(), strict=True):
                if code == "r":
                    n_models = len(self.config.catalogues[writes[i].scope])
                    first = PendingRecord.unpack(bytes(next(stored_before)), n_models)
                    results[i] = RouteResult(False, False, first)
                else:
                    results[i] = RouteResult(True, code == "e", beyond=beyond[id(writes[i])])
        return results

    @classified
    async def feedback(self, writes: Sequence[LabelWrite]) -> list[FeedbackOutcome]:
        def args(w: LabelWrite) -> list[Any]:
            known, correct = label_masks(w, self.config.catalogues[w.scope])
            return [query_hash(w.query_id), known, correct]

        results: list[Any] = [None] * len(writes)
        for rows, codes in await self._per_scope(self._feedback, writes, args):
            for i, code in zip(rows, codes.decode(), strict=True):
                results[i] = OUTCOMES[code]
        return results

    @classified
    async def read_window(
        self, scope: str, *, after: str | None = None, count: int = 10_000
    ) -> list[WindowEntry]:
        start = "-" if after is None else f"({after}"
        rows: Any = await self.client.xrange(keys.window(scope), start, "+", count=count)
        n_models = len(self.config.catalogues[scope])
        return [window_entry(i.decode(), f[b"r"], f[b"q"], n_models) for i, f in rows]

    @classified
    async def sweep_expired_audits(
        self, scope: str, *, now: float, epoch: int, limit: int = MAX_SCRIPT_RECORDS
    ) -> SweepResult:
        got: Any = await self._sweep(
            keys=[
                keys.window(scope),
                keys.audits(scope),
                keys.counters(scope),
                keys.slots(scope),
                keys.epoch(scope),
            ],
            args=[repr(now), limit, self.config.window_size, keys.pending(scope), epoch],
        )
        return SweepResult(int(got[0]), int(got[1]), int(got[2]), int(got[3]))

    async def _fenced_write(self, scope: str, key: str, *command: Any, epoch: int) -> None:
        """One command on ``key`` that lands only under the scope's current lease epoch."""
        await self._fenced(keys=[key, keys.epoch(scope)], args=[*command, epoch])

    @classified
    async def trim_window(self, scope: str, *, min_id: str, epoch: int) -> None:
        await self._fenced_write(scope, keys.window(scope), "XTRIM", "MINID", min_id, epoch=epoch)

    @classified
    async def reset_scope(self, scope: str, *, epoch: int) -> None:
        held_slot = int(self.clock() // self.config.held_ttl_s)
        await self._reset(
            keys=[keys.window(scope), keys.audits(scope), keys.slots(scope),
                  keys.upper_bound(scope), keys.monitor(scope), keys.epoch(scope)],
            args=[keys.pending(scope), keys.held(scope), held_slot, epoch],
        )  # fmt: skip

    @classified
    async def load_threshold(self, scope: str) -> bytes | None:
        stored: Any = await self.client.hget(keys.threshold(scope), "json")
        return cast(bytes | None, stored)

    @classified
    async def current(self, scope: str) -> tuple[int, bytes | None]:
        got: Any = await self._current(
            keys=[keys.incarnation(scope), keys.threshold(scope)], args=[]
        )
        return int(got[0]), got[1]

    @classified
    async def save_threshold(
        self, scope: str, version: int, threshold: bytes, *, epoch: int
    ) -> bool:
        saved = await self._save(
            keys=[keys.threshold(scope), keys.history(scope), keys.epoch(scope)],
            args=[version, threshold, self.config.history_size, epoch],
        )
        return bool(saved)

    @classified
    async def threshold_history(self, scope: str, *, count: int = 1000) -> list[bytes]:
        rows: Any = await self.client.xrevrange(keys.history(scope), "+", "-", count=count)
        return [fields[b"json"] for _, fields in reversed(rows)]

    @classified
    async def upper_bound(self, scope: str) -> tuple[int, int]:
        got: Any = await self.client.hmget(keys.upper_bound(scope), ["n", "misses"])
        return int(got[0] or 0), int(got[1] or 0)

    @classified
    async def covariate_counts(self, scope: str) -> tuple[int, int]:
        got: Any = await self.client.hmget(keys.upper_bound(scope), ["watched", "low_top"])
        return int(got[0] or 0), int(got[1] or 0)

    @classified
    async def save_alert(self, scope: str, alert: bytes, *, epoch: int) -> None:
        maxlen = ("MAXLEN", "~", self.config.history_size)
        await self._fenced_write(
            scope, keys.alerts(scope), "XADD", *maxlen, "*", "json", alert, epoch=epoch
        )

    @classified
    async def alerts(self, scope: str, *, count: int = 1000) -> list[bytes]:
        rows: Any = await self.client.xrevrange(keys.alerts(scope), "+", "-", count=count)
        return [fields[b"json"] for _, fields in reversed(rows)]

    @classified
    async def alerts_after(
        self, scope: str, after: str, *, count: int = 100
    ) -> list[tuple[str, bytes]]:
        rows: Any = await self.client.xrange(keys.alerts(scope), f"({after}", "+", count=count)
        return [(i.decode(), fields[b"json"]) for i, fields in rows]

    @classified
    async def load_outbox(self, scope: str) -> dict[str, str]:
        return await self._text_hash(keys.outbox(scope))

    @classified
    async def save_outbox(self, scope: str, marks: Mapping[str, str], *, epoch: int) -> None:
        await self._fenced_hset(scope, keys.outbox(scope), marks, epoch=epoch)

    @classified
    async def start_outbox(self, scope: str, *, epoch: int) -> None:
        # Alerts stored before the outbox existed were published as they were stored.
        newest: Any = await self.client.xrevrange(keys.alerts(scope), "+", "-", count=1)
        mark = newest[0][0].decode() if newest else "0-0"
        await self._fenced_write(scope, keys.outbox(scope), "HSETNX", "alert", mark, epoch=epoch)

    @classified
    async def load_monitor(self, scope: str) -> dict[str, str]:
        return await self._text_hash(keys.monitor(scope))

    @classified
    async def save_monitor(self, scope: str, state: Mapping[str, str], *, epoch: int) -> None:
        if state:
            await self._fenced_hset(scope, keys.monitor(scope), state, epoch=epoch)

    async def _text_hash(self, key: str) -> dict[str, str]:
        got: Any = await self.client.hgetall(key)
        return {k.decode(): v.decode() for k, v in got.items()}

    async def _fenced_hset(
        self, scope: str, key: str, fields: Mapping[str, str], *, epoch: int
    ) -> None:
        pairs = [x for field, value in fields.items() for x in (field, value)]
        await self._fenced_write(scope, key, "HSET", *pairs, epoch=epoch)

    @classified
    async def hold_lease(
        self,
        scope: str,
        holder: str,
        *,
        ttl_s: float,
        last_epoch: int | None,
        incarnation: int = 0,
    ) -> Lease:
        got: Any = await self._lease(
            keys=[keys.lease(scope), keys.epoch(scope), keys.incarnation(scope)],
            args=[
                holder, max(1, int(ttl_s * 1000)), "" if last_epoch is None else last_epoch,
                incarnation,
            ],
        )  # fmt: skip
        return Lease(int(got[0]), got[1].decode())

    @classified
    async def release_lease(self, scope: str, holder: str, *, epoch: int) -> None:
        await self._release(keys=[keys.lease(scope)], args=[f"{epoch} {holder}"])

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
