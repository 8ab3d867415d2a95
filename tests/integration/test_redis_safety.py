"""Redis states that threaten the worker's state: eviction is refused at start, a full or
read-only Redis is an outage to ride out, an error no retry cures is a failure."""

import os
import subprocess
import sys

import pytest
import redis

from racer_online.errors import StoreFailedError, StoreUnavailableError
from racer_online.local.services import EmbeddedRedis
from racer_online.store import PendingWrite, RedisStore, StoreConfig, keys
from racer_online.store.connection import connect_sync

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


def test_a_worker_on_the_old_pending_layout_says_what_to_do_in_one_line(own_redis):
    with redis.Redis.from_url(own_redis.url) as client:
        client.zadd(keys.legacy_audits("default"), {"racer:{default}:pending:q1": 1.0})
    proc = start_worker(own_redis.url)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[0] == (
        "racer-online: warning: scope 'default' has pending records of the old layout: they "
        "are ignored and expire within RACER_PENDING_TTL_S; then delete racer:{default}:audits"
    )


def test_a_redis_cluster_with_one_evicting_primary_is_refused(redis_cluster_url):
    nodes = connect_sync(redis_cluster_url)
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


# -- errors the worker rides out, and errors it must not retry -------------------------------


def tiny_store(url: str, scope: str = "s") -> RedisStore:
    config = StoreConfig({scope: ("m0", "m1")}, pending_ttl_s=60, window_size=100)
    return RedisStore.from_url(url, config)


def write(qid: str, scope: str = "s") -> PendingWrite:
    return PendingWrite(scope, qid, b"\x00" * 6, 0.5, True, (0,))


async def test_a_full_redis_is_unavailable_not_broken(own_redis):
    store = tiny_store(own_redis.url)
    with redis.Redis.from_url(own_redis.url) as client:
        client.set("ballast", b"x" * 2_000_000)
        client.config_set("maxmemory", client.info("memory")["used_memory"] // 2)  # full now
    try:
        with pytest.raises(StoreUnavailableError, match=r"redis unavailable: .*maxmemory"):
            await store.route([write("q1")])
        with redis.Redis.from_url(own_redis.url) as client:
            client.config_set("maxmemory", 0)  # room again: the same call goes through
        assert (await store.route([write("q1")]))[0].created
    finally:
        await store.close()


async def test_a_read_only_replica_is_unavailable_not_broken(own_redis):
    store = tiny_store(own_redis.url)
    with redis.Redis.from_url(own_redis.url) as client:
        client.replicaof("127.0.0.1", 1)  # demoted, as an old primary is after a failover
    try:
        with pytest.raises(StoreUnavailableError, match="is a replica"):
            await store.route([write("q1")])
    finally:
        with redis.Redis.from_url(own_redis.url) as client:
            client.replicaof("NO", "ONE")
        await store.close()


async def test_a_primary_without_the_replicas_it_requires_is_unavailable_not_broken(own_redis):
    """min-replicas-to-write (writes only while a replica is in sync, so that a failover
    loses less): its NOREPLICAS refusal is an outage, not a failure that stops the worker."""
    store = tiny_store(own_redis.url)
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("min-replicas-to-write", 1)  # and it has none
    try:
        with pytest.raises(StoreUnavailableError, match="NOREPLICAS"):
            await store.route([write("q1")])
        with redis.Redis.from_url(own_redis.url) as client:
            client.config_set("min-replicas-to-write", 0)
        assert (await store.route([write("q1")]))[0].created
    finally:
        await store.close()


async def test_a_script_error_is_a_failure_not_an_outage(own_redis):
    store = tiny_store(own_redis.url)
    with redis.Redis.from_url(own_redis.url) as client:
        client.set(keys.window("s"), "not a stream")  # the route script's XADD must fail
        client.set(keys.slots("s"), "not a hash")
    try:
        with pytest.raises(StoreFailedError, match=r"redis refused a command: .*WRONGTYPE"):
            await store.route([write("q1")])
    finally:
        await store.close()


async def test_a_worker_stops_on_an_error_no_retry_cures(deployment, redis_url):
    """A poisoned key makes the route script fail for good: the worker exits rather than
    redeliver the same batch to itself forever, and its log names the reason."""
    deployment.write_scopes(["m0", "m1"])
    with redis.Redis.from_url(redis_url) as client:
        client.set(keys.window(deployment.scope), "not a stream")
        client.set(keys.slots(deployment.scope), "not a hash")
    worker = deployment.start_worker()
    query = {"query_id": "q1", "scope": deployment.scope, "scores": {"m0": 0.5, "m1": 0.5}}
    await deployment.send("queries", [query])
    assert worker.wait(timeout=60) != 0
    assert "redis refused a command" in deployment.log()
