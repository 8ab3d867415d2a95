"""The Redis store: one Lua call per scope and batch, so several keys change together."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from importlib.resources import files
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from racer_online.errors import StoreUnavailableError
from racer_online.settings import Settings
from racer_online.store import keys
from racer_online.store.base import (
    FeedbackOutcome,
    LabelWrite,
    PendingWrite,
    RouteResult,
    StoreConfig,
    WindowEntry,
)
from racer_online.store.connection import redis_options

P = ParamSpec("P")
T = TypeVar("T")
W = TypeVar("W", PendingWrite, LabelWrite)
OUTCOMES = {outcome.value[0]: outcome for outcome in FeedbackOutcome}  # feedback.lua's letters


def _unavailable_when_unreachable(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Connection failures become `StoreUnavailableError`: the caller retries, no crash."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailableError(f"redis unreachable: {exc}") from exc

    return wrapper


def _lua(name: str) -> str:
    source = files("racer_online.store").joinpath("lua", name).read_text()
    if name in ("route.lua", "feedback.lua"):
        return _lua("common.lua") + source
    return source


class RedisStore:
    def __init__(self, client: aioredis.Redis, config: StoreConfig) -> None:
        self.client = client
        self.config = config
        self._route = client.register_script(_lua("route.lua"))
        self._feedback = client.register_script(_lua("feedback.lua"))
        self._save = client.register_script(_lua("save_threshold.lua"))

    @classmethod
    def from_settings(cls, settings: Settings, config: StoreConfig) -> RedisStore:
        """The configured Redis, with its credentials, TLS and timeouts."""
        return cls.from_url(
            settings.redis_url,
            config,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            **redis_options(settings),
        )

    @classmethod
    def from_url(cls, url: str, config: StoreConfig, **options: Any) -> RedisStore:
        """``options``: redis-py connection options, e.g. from `security.redis_options`."""
        return cls(aioredis.Redis.from_url(url, decode_responses=False, **options), config)

    @property
    def _ttl_ms(self) -> int:
        return int(self.config.pending_ttl_s * 1000)

    async def _per_scope(
        self, script: AsyncScript, items: Sequence[W], args: Callable[[W], list[Any]]
    ) -> list[tuple[list[int], Any]]:
        """One script call per scope, all in one pipeline: (positions in ``items``, reply)."""
        by_scope: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_scope[item.scope].append(i)
        async with self.client.pipeline(transaction=False) as pipe:
            for scope, rows in by_scope.items():
                models: Sequence[str] = self.config.catalogues[scope]
                head: list[Any] = [self._ttl_ms, self.config.window_size, len(models), *models]
                pending: list[str] = [keys.pending(scope, items[i].query_id) for i in rows]
                await script(
                    keys=[keys.window(scope), keys.upper_bound(scope), *pending],
                    args=head + [a for i in rows for a in args(items[i])],
                    client=pipe,
                )
            replies = await pipe.execute() if by_scope else []
        return list(zip(by_scope.values(), replies, strict=True))

    @_unavailable_when_unreachable
    async def route(self, writes: Sequence[PendingWrite]) -> list[RouteResult]:
        def args(w: PendingWrite) -> list[Any]:
            invoked = ",".join(map(str, w.invoked))
            return [w.decision, w.scores, repr(w.lam), int(w.audit), invoked]

        results: list[Any] = [None] * len(writes)
        for rows, (codes, *firsts) in await self._per_scope(self._route, writes, args):
            stored_before = iter(firsts)
            for i, code in zip(rows, codes.decode(), strict=True):
                if code == "r":
                    results[i] = RouteResult(bytes(next(stored_before)), False, False)
                else:
                    results[i] = RouteResult(writes[i].decision, True, code == "e")
        return results

    @_unavailable_when_unreachable
    async def feedback(self, writes: Sequence[LabelWrite]) -> list[FeedbackOutcome]:
        def args(w: LabelWrite) -> list[Any]:
            return [len(w.labels), *(x for model, y in w.labels.items() for x in (model, int(y)))]

        results: list[Any] = [None] * len(writes)
        for rows, codes in await self._per_scope(self._feedback, writes, args):
            for i, code in zip(rows, codes.decode(), strict=True):
                results[i] = OUTCOMES[code]
        return results

    @_unavailable_when_unreachable
    async def read_window(
        self, scope: str, *, after: str | None = None, count: int = 10_000
    ) -> list[WindowEntry]:
        start = "-" if after is None else f"({after}"
        rows: Any = await self.client.xrange(keys.window(scope), start, "+", count=count)
        return [
            WindowEntry(i.decode(), f[b"s"], f[b"y"].decode(), float(f[b"lam"])) for i, f in rows
        ]

    @_unavailable_when_unreachable
    async def trim_window(self, scope: str, *, min_id: str) -> None:
        await self.client.xtrim(keys.window(scope), minid=min_id, approximate=False)

    @_unavailable_when_unreachable
    async def load_threshold(self, scope: str) -> bytes | None:
        stored: Any = await self.client.hget(keys.threshold(scope), "json")
        return cast(bytes | None, stored)

    @_unavailable_when_unreachable
    async def save_threshold(self, scope: str, version: int, threshold: bytes) -> bool:
        saved = await self._save(
            keys=[keys.threshold(scope), keys.history(scope)],
            args=[version, threshold, self.config.history_size],
        )
        return bool(saved)

    @_unavailable_when_unreachable
    async def threshold_history(self, scope: str, *, count: int = 1000) -> list[bytes]:
        rows: Any = await self.client.xrevrange(keys.history(scope), "+", "-", count=count)
        return [fields[b"json"] for _, fields in reversed(rows)]

    @_unavailable_when_unreachable
    async def upper_bound(self, scope: str) -> tuple[int, int]:
        got: Any = await self.client.hmget(keys.upper_bound(scope), ["n", "misses"])
        return int(got[0] or 0), int(got[1] or 0)

    @_unavailable_when_unreachable
    async def save_alert(self, scope: str, alert: bytes) -> None:
        await self.client.xadd(
            keys.alerts(scope), {"json": alert}, maxlen=self.config.history_size, approximate=True
        )

    @_unavailable_when_unreachable
    async def alerts(self, scope: str, *, count: int = 1000) -> list[bytes]:
        rows: Any = await self.client.xrevrange(keys.alerts(scope), "+", "-", count=count)
        return [fields[b"json"] for _, fields in reversed(rows)]

    @_unavailable_when_unreachable
    async def load_monitor(self, scope: str) -> dict[str, str]:
        got: Any = await self.client.hgetall(keys.monitor(scope))
        return {k.decode(): v.decode() for k, v in got.items()}

    @_unavailable_when_unreachable
    async def save_monitor(self, scope: str, state: Mapping[str, str]) -> None:
        mapping: dict[Any, Any] = dict(state)
        await self.client.hset(keys.monitor(scope), mapping=mapping)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
