"""One Redis URL setting for a server or a Cluster; TLS options follow the scheme."""

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from racer_online.errors import ConfigError
from racer_online.settings import Settings
from racer_online.store.connection import connect, connect_sync, redis_options


@pytest.mark.parametrize(
    ("url", "kind", "blocking"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Redis, redis.Redis),
        ("rediss://cache:6380/0", aioredis.Redis, redis.Redis),
        ("redis+cluster://127.0.0.1:7000/0", RedisCluster, None),
        ("rediss+cluster://cache:7000", RedisCluster, None),
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
