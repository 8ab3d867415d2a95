"""What a worker checks of its Redis before it starts: nothing may evict pending records,
and records of an older pending layout are named (they are ignored, and expire)."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from racer_online.errors import ConfigError
from racer_online.store import keys
from racer_online.store.errors import classified
from racer_online.store.redis import RedisStore

log = logging.getLogger(__name__)
SAFE_EVICTION_POLICY = "noeviction"


@classified
async def eviction_policies(store: RedisStore) -> set[str] | None:
    """``maxmemory-policy`` of every primary; None where CONFIG is refused (managed
    Redis services often disable it), so the policy cannot be read."""
    client = store.client
    try:
        if isinstance(client, RedisCluster):
            got: Any = await client.config_get(
                "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
            )
            return {node["maxmemory-policy"] for node in got.values()}
        one: Any = await client.config_get("maxmemory-policy")
        return {one["maxmemory-policy"]}
    except ResponseError:
        return None


async def refuse_evicting_redis(store: RedisStore) -> None:
    """Raise `ConfigError` unless Redis refuses writes when full instead of evicting keys.

    A volatile-* policy evicts exactly the pending records (the keys with a TTL), the
    slowest-graded first, which biases the window towards quickly graded queries; an
    allkeys-* policy may also evict the window or the threshold. A full Redis that refuses
    writes is an outage the worker rides out; an evicting one corrupts calibration silently.
    """
    policies = await eviction_policies(store)
    if policies is None:
        log.warning("cannot read Redis maxmemory-policy (CONFIG refused): make sure it is "
                    "%s", SAFE_EVICTION_POLICY)  # fmt: skip
        return
    unsafe = sorted(policies - {SAFE_EVICTION_POLICY})
    if unsafe:
        raise ConfigError(
            f"Redis maxmemory-policy is {unsafe[0]}: it may evict pending records and bias "
            f"the calibration window; set maxmemory-policy {SAFE_EVICTION_POLICY}"
        )


async def scopes_on_the_old_layout(store: RedisStore) -> list[str]:
    """Scopes whose Redis still holds the audits of the layout before slots (a key per
    pending record): the worker ignores those records, which expire within the horizon."""
    scopes = list(store.config.catalogues)
    found = [await store.client.exists(keys.legacy_audits(s)) for s in scopes]
    return [scope for scope, n in zip(scopes, found, strict=True) if n]
