"""The worker refuses a Redis that may evict its state, in one line, before it starts."""

import os
import subprocess
import sys

import pytest
import redis

from racer_online.local.services import EmbeddedRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(monkeypatch, tmp_path):
    monkeypatch.delenv("RACER_REDIS_URL", raising=False)  # a server this test may reconfigure
    with EmbeddedRedis(data_dir=tmp_path) as server:
        yield server


def start_worker(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "RACER_REDIS_URL": redis_url,
        "RACER_KAFKA_BROKER": "kafka://127.0.0.1:1",  # never reached: Redis is checked first
    }
    return subprocess.run(
        [sys.executable, "-m", "racer_online", "worker"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lfu", "volatile-ttl"])
def test_an_evicting_redis_is_refused_in_one_line(own_redis, policy):
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("maxmemory-policy", policy)
    proc = start_worker(own_redis.url)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"racer-online: error: Redis maxmemory-policy is {policy}: it may evict pending "
        "records and bias the calibration window; set maxmemory-policy noeviction"
    ]


def test_a_redis_cluster_with_one_evicting_primary_is_refused(redis_cluster_url):
    nodes = redis.RedisCluster.from_url(redis_cluster_url.replace("+cluster://", "://"))
    try:
        primary = nodes.get_primaries()[-1]
        nodes.config_set("maxmemory-policy", "volatile-lru", target_nodes=primary)
        proc = start_worker(redis_cluster_url)
    finally:
        nodes.config_set("maxmemory-policy", "noeviction", target_nodes=nodes.PRIMARIES)
        nodes.close()
    assert proc.returncode == 1
    assert "maxmemory-policy is volatile-lru" in proc.stderr
    assert "Traceback" not in proc.stderr
