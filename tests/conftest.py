"""Shared fixtures: a real broker and a real Redis, started lazily, once per session.

The broker is Tansu unless ``RACER_TEST_BROKER=apache`` (`make test` sets it): Apache Kafka
from Maven Central, which needs Java 17 and Maven (a missing one fails the tests that need a
broker with one line saying what to install). Tests marked ``apache`` need Apache Kafka
whatever the session broker is (its replication, its log on disk).

Redis isolation: the Redis may be shared (a developer's, CI's 127.0.0.1:6379, another test run
going on at the same time), so no test may FLUSHDB or use fixed key names. Put the `redis_ns`
string in every key a test writes (as the key prefix or as the scope name, e.g.
f"{redis_ns}:racer:{{scope}}:window"); its keys are deleted after the test.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

from racer_online.local.brokers import BROKERS, LocalBroker, local_broker
from racer_online.local.processes import redis_reachable
from racer_online.local.redis_cluster import LocalRedisCluster
from racer_online.local.services import EmbeddedRedis
from racer_online.store.connection import connect_sync


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """``tansu`` or ``apache``, from ``RACER_TEST_BROKER`` (default tansu)."""
    kind = os.environ.get("RACER_TEST_BROKER", "tansu")
    if kind not in BROKERS:
        pytest.exit(f"RACER_TEST_BROKER={kind!r}: one of {', '.join(BROKERS)}", returncode=2)
    return kind


@pytest.fixture(scope="session")
def broker(broker_kind: str) -> Iterator[LocalBroker]:
    """One broker for the session; tests use unique topic names (uuid) to stay apart."""
    with local_broker(broker_kind) as started:
        yield started


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """RACER_REDIS_URL if it answers, else a local Redis on 6379, else one started here."""
    for url in (os.environ.get("RACER_REDIS_URL"), "redis://127.0.0.1:6379/0"):
        if url and redis_reachable(url):
            yield url
            return
    with EmbeddedRedis() as started:
        yield started.url


@pytest.fixture
def redis_ns(redis_url: str) -> Iterator[str]:
    """A key namespace unique to this test; every key containing it is deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    with connect_sync(redis_url) as client:
        for key in list(client.scan_iter(match=f"*{namespace}*", count=1000)):
            client.delete(key)  # one by one: a Cluster refuses keys of several slots


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback for the session (``redis+cluster://`` URL)."""
    with LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url
