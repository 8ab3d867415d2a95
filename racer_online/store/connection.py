"""Redis clients from settings: one server, a Cluster or a Sentinel deployment, with
credentials, TLS and redis-py's retry policy (the settings checked at load that they fit
together; the files are read here).

``redis://`` and ``rediss://`` name one server, which is used only while it is a primary
(store/primary.py); ``redis+cluster://`` and ``rediss+cluster://`` name any node of a Redis
Cluster, whose other nodes the client discovers; ``redis+sentinel://`` and
``rediss+sentinel://`` name the sentinels, which say where the primary is
(racer_online/redis_urls.py). Every key of a scope carries the scope as a hash tag
(store/keys.py), so one Lua call per scope and batch touches a single slot either way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.sentinel
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from racer_online.files import readable_file
from racer_online.redis_urls import SentinelUrl, parse_sentinel_url, url_kind
from racer_online.settings import Settings
from racer_online.store.primary import RoleWatch, WatchedSentinelPool, primary_connection_class

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

AsyncRedis = aioredis.Redis | RedisCluster


class SentinelRedis(aioredis.Redis):
    """The client of a Sentinel deployment's primary; closing it closes its sentinel
    clients too (redis-py leaves them to the caller)."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def _split(url: str) -> tuple[bool, str]:
    """Whether ``url`` names a Cluster, and the URL redis-py takes for it."""
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return True, f"{CLUSTER_SCHEMES[scheme]}://{rest}"
    return False, url


def _sentinel_kwargs(address: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    """The options of the clients of the sentinels themselves: the same time-outs and TLS
    as the data nodes', their own credentials (``sentinel_kwargs`` in ``options``)."""
    own = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl_"))}
    given: dict[str, Any] = options.pop("sentinel_kwargs", {})
    return own | ({"ssl": True} if address.tls else {}) | given


def _node_kwargs(address: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    credentials = {"username": address.username, "password": address.password}
    tls = {"ssl": True} if address.tls else {}
    return {k: v for k, v in credentials.items() if v is not None} | tls | options


def connect(url: str, **options: Any) -> AsyncRedis:
    """A client for ``url`` (bytes replies): a `RedisCluster` for the cluster schemes, the
    Sentinel-managed primary for the sentinel schemes."""
    kind, tls = url_kind(url)
    if kind == "sentinel":
        address = parse_sentinel_url(url)
        sentinel_kwargs = _sentinel_kwargs(address, options)
        sentinel = Sentinel(address.sentinels, sentinel_kwargs=sentinel_kwargs)
        client: SentinelRedis = sentinel.master_for(
            address.service, redis_class=SentinelRedis, connection_pool_class=WatchedSentinelPool,
            db=address.db, **_node_kwargs(address, options),
        )  # fmt: skip
        client.sentinels = sentinel
        return client
    options.pop("sentinel_kwargs", None)
    if kind == "cluster":
        return RedisCluster.from_url(_split(url)[1], **options)
    connection_class = primary_connection_class(tls)
    return aioredis.Redis.from_url(
        url, connection_class=connection_class, role_watch=RoleWatch(), **options
    )


def connect_sync(url: str, **options: Any) -> redis.Redis | redis.RedisCluster:
    """The blocking client for ``url`` (tests, benchmarks, local tooling): the primary's,
    for the sentinel schemes."""
    kind, _ = url_kind(url)
    if kind == "sentinel":
        address = parse_sentinel_url(url)
        sentinel_kwargs = _sentinel_kwargs(address, options)
        sentinel = redis.sentinel.Sentinel(address.sentinels, sentinel_kwargs=sentinel_kwargs)
        primary: redis.Redis = sentinel.master_for(
            address.service, db=address.db, **_node_kwargs(address, options)
        )
        return primary
    options.pop("sentinel_kwargs", None)
    cluster, plain = _split(url)
    return (redis.RedisCluster if cluster else redis.Redis).from_url(plain, **options)


def redis_retry(settings: Settings) -> Retry:
    """redis-py's retry of one call, from the settings: its own default moved between
    releases (7.x: 3 retries; 8.x: 10, of 10 ms to 1 s)."""
    backoff = ExponentialWithJitterBackoff(
        cap=settings.redis_retry_backoff_max_s, base=settings.redis_retry_backoff_s
    )
    return Retry(backoff, settings.redis_retries)


def shown_url(url: str) -> str:
    """``url`` fit for a log line or an error: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}***@{host}").geturl()


def redis_options(settings: Settings) -> dict[str, Any]:
    """``connect(settings.redis_url, **redis_options(settings))``: credentials and TLS."""
    kind, tls = url_kind(settings.redis_url)
    files = {
        "RACER_REDIS_CA_FILE": settings.redis_ca_file,
        "RACER_REDIS_CERT_FILE": settings.redis_cert_file,
        "RACER_REDIS_KEY_FILE": settings.redis_key_file,
    }
    options: dict[str, Any] = {}
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if tls:
        options["ssl_cert_reqs"] = "required"
        readable = {name: readable_file(path, name) for name, path in files.items()}
        for name, option in (
            ("RACER_REDIS_CA_FILE", "ssl_ca_certs"),
            ("RACER_REDIS_CERT_FILE", "ssl_certfile"),
            ("RACER_REDIS_KEY_FILE", "ssl_keyfile"),
        ):
            if readable[name] is not None:
                options[option] = readable[name]
    if kind == "sentinel":
        own: dict[str, Any] = {}
        if settings.redis_sentinel_username is not None:
            own["username"] = settings.redis_sentinel_username
        if settings.redis_sentinel_password is not None:
            own["password"] = settings.redis_sentinel_password.get_secret_value()
        options["sentinel_kwargs"] = own
    return options
