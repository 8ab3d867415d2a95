"""One Redis URL setting for a server, a Cluster or Sentinel; TLS options follow the scheme."""

import re

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from racer_online.errors import ConfigError
from racer_online.redis_urls import SentinelUrl, parse_sentinel_url
from racer_online.settings import Settings
from racer_online.store import RedisStore, StoreConfig
from racer_online.store.connection import SentinelRedis, connect, connect_sync, redis_options
from racer_online.store.primary import PrimaryConnection, PrimarySSLConnection, WatchedSentinelPool


@pytest.mark.parametrize(
    ("url", "kind", "blocking"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Redis, redis.Redis),
        ("rediss://cache:6380/0", aioredis.Redis, redis.Redis),
        ("redis+cluster://127.0.0.1:7000/0", RedisCluster, None),
        ("rediss+cluster://cache:7000", RedisCluster, None),
        ("redis+sentinel://s1:26379,s2:26379/mymaster/0", SentinelRedis, redis.Redis),
    ],
)
def test_the_scheme_picks_the_client(url, kind, blocking):
    settings = Settings(redis_url=url, _env_file=None)
    assert settings.redis_url == url  # kept as given, for redis-py
    assert type(connect(url)) is kind  # not connected until used
    if blocking is not None:  # a blocking cluster client connects at once: the cluster
        assert type(connect_sync(url)) is blocking  # tests use it on a real one


def test_tls_files_need_a_tls_scheme_on_a_cluster_too(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    tls = Settings(redis_url="rediss+cluster://cache:7000", redis_ca_file=ca, _env_file=None)
    assert redis_options(tls)["ssl_ca_certs"] == str(ca)
    with pytest.raises(ConfigError, match="needs a rediss:// RACER_REDIS_URL"):
        Settings.load(redis_url="redis+cluster://cache:7000", redis_ca_file=ca, _env_file=None)


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "user", "password", "tls"),
    [
        ("redis+sentinel://h1:26380,h2/mymaster/0", (("h1", 26380), ("h2", 26379)),
         "mymaster", 0, None, None, False),
        ("rediss+sentinel://racer:s%40cret@10.0.0.1:5000/cache/3", (("10.0.0.1", 5000),),
         "cache", 3, "racer", "s@cret", True),
        ("redis+sentinel://[::1]:26379,[::2]/m", (("::1", 26379), ("::2", 26379)),
         "m", 0, None, None, False),
    ],
)  # fmt: skip
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db(
    url, sentinels, service, db, user, password, tls
):
    assert parse_sentinel_url(url) == SentinelUrl(sentinels, service, db, user, password, tls)
    assert Settings(redis_url=url, _env_file=None).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379", "name the service"),
        ("redis+sentinel://h1:26379/m/zero", "database 'zero' is not a number"),
        ("redis+sentinel://h1:99999/m", "sentinel 'h1:99999' is not host:port"),
        ("redis+sentinel://h1,/m", "sentinel '' is not host:port"),
        ("redis+sentinel://h1/m/0?ssl=1", "takes no ?query"),
    ],
)
def test_a_bad_sentinel_url_is_one_line_naming_the_problem(url, problem):
    with pytest.raises(ConfigError, match=rf"^setting RACER_REDIS_URL: .*{re.escape(problem)}"):
        Settings.load(redis_url=url, _env_file=None)


def test_sentinel_clients_get_the_sentinels_credentials_and_the_nodes_tls(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    settings = Settings(
        redis_url="rediss+sentinel://s1:26379,s2:26379/mymaster/2", redis_ca_file=ca,
        redis_password="node-secret", redis_sentinel_password="sentinel-secret", _env_file=None,
    )  # fmt: skip
    client = connect(settings.redis_url, **redis_options(settings))
    assert isinstance(client, SentinelRedis)
    pool = client.connection_pool
    assert isinstance(pool, WatchedSentinelPool) and pool.service_name == "mymaster"
    node = pool.connection_kwargs
    assert (node["db"], node["password"], node["ssl_ca_certs"]) == (2, "node-secret", str(ca))
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert client.sentinels is not None
    for sentinel in client.sentinels.sentinels:  # TLS like the nodes, their own password
        kwargs = sentinel.connection_pool.connection_kwargs
        assert (kwargs["password"], kwargs["ssl_ca_certs"]) == ("sentinel-secret", str(ca))
        assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"
    with pytest.raises(ConfigError, match="RACER_REDIS_SENTINEL_PASSWORD: needs a redis"):
        Settings.load(redis_sentinel_password="x", _env_file=None)


def test_a_plain_url_gets_connections_that_keep_only_to_a_primary():
    for url, kind in (("redis://h:6379/0", PrimaryConnection),
                      ("rediss://h:6380/0", PrimarySSLConnection)):  # fmt: skip
        pool = connect(url, **redis_options(Settings(redis_url=url, _env_file=None)))
        assert pool.connection_pool.connection_class is kind


def test_redis_py_retries_as_the_settings_say():
    """redis-py's own default moved (7.x: 3 retries, 8.x: 10 of 10 ms-1 s): ours is set."""
    settings = Settings(redis_retries=5, redis_retry_backoff_s=0.2, redis_retry_backoff_max_s=2,
                        _env_file=None)  # fmt: skip
    config = StoreConfig({"s": ("m0", "m1")}, pending_ttl_s=60, window_size=100)
    retry = RedisStore.from_settings(settings, config).client.get_retry()
    assert retry is not None and retry.get_retries() == 5
    backoff = retry._backoff
    assert (backoff._base, backoff._cap) == (0.2, 2)
