"""What a worker checks of its Redis before it starts: nothing may evict pending records,
records of an older pending layout are named (they are ignored, and expire), and every
worker on the Redis draws audits under the same key."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from racer_online.errors import ConfigError
from racer_online.settings import Settings
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


# What the fingerprint signs: a fixed text, so that it identifies the key and reveals nothing.
FINGERPRINT_OF = b"racer-online audit key fingerprint v1"


def audit_key_fingerprint(key: str) -> str:
    return hmac.new(key.encode(), FINGERPRINT_OF, hashlib.sha256).hexdigest()


@classified
async def refuse_another_audit_key(store: RedisStore, settings: Settings) -> None:
    """Raise `ConfigError` unless this worker draws audits as the others on its Redis do.

    A redelivered query may be decided again on another replica (its first decision gone
    past the horizon), and replicas with different keys draw its audit differently. So the
    first worker with ``RACER_AUDIT_KEY`` stores a fingerprint of it (an HMAC under the key,
    SET NX: never the key itself), and a worker whose key does not match it refuses to start.
    A worker without the setting holds a random key, which can match no stored fingerprint:
    it refuses too, once one is stored; before, it starts (a single local worker), stores
    nothing and logs that its key is random (worker/app.py)."""
    name = keys.audit_key_fingerprint()
    if "audit_key" not in settings.model_fields_set:
        if await store.client.exists(name):
            raise ConfigError(
                "RACER_AUDIT_KEY is not set, but the workers sharing this Redis draw audits "
                f"under a key (its fingerprint is {name}): set RACER_AUDIT_KEY to theirs"
            )
        return
    mine = audit_key_fingerprint(settings.audit_key.get_secret_value())
    await store.client.set(name, mine, nx=True)
    stored: Any = await store.client.get(name)
    if stored is not None and stored.decode() != mine:
        raise ConfigError(
            f"RACER_AUDIT_KEY differs from the key of the workers sharing this Redis (its "
            f"fingerprint is {name}): give every worker the same secret"
        )
