"""Redis clients from settings: one server or a Cluster, credentials and TLS (the settings
checked at load that they fit together; the files are read here).

``redis://`` and ``rediss://`` name one server; ``redis+cluster://`` and
``rediss+cluster://`` name any node of a Redis Cluster, whose other nodes the client
discovers. Every key of a scope carries the scope as a hash tag (store/keys.py), so one Lua
call per scope and batch touches a single slot either way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from racer_online.files import readable_file
from racer_online.settings import Settings

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

AsyncRedis = aioredis.Redis | RedisCluster


def _split(url: str) -> tuple[bool, str]:
    """Whether ``url`` names a Cluster, and the URL redis-py takes for it."""
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return True, f"{CLUSTER_SCHEMES[scheme]}://{rest}"
    return False, url


def connect(url: str, **options: Any) -> AsyncRedis:
    """A client for ``url`` (bytes replies): a `RedisCluster` for the cluster schemes."""
    cluster, plain = _split(url)
    return (RedisCluster if cluster else aioredis.Redis).from_url(plain, **options)


def connect_sync(url: str, **options: Any) -> redis.Redis | redis.RedisCluster:
    """The blocking client for ``url`` (tests, benchmarks, local tooling)."""
    cluster, plain = _split(url)
    return (redis.RedisCluster if cluster else redis.Redis).from_url(plain, **options)


def shown_url(url: str) -> str:
    """``url`` fit for a log line or an error: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}***@{host}").geturl()


def redis_options(settings: Settings) -> dict[str, Any]:
    """``connect(settings.redis_url, **redis_options(settings))``."""
    url = urlsplit(settings.redis_url)
    tls = url.scheme in ("rediss", "rediss+cluster")
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
    return options
