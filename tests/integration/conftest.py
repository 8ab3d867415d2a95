"""A deployment of real workers on the session's broker and Redis, isolated per test.

Each test gets its own consumer group, topics and scope (so its Redis keys), so tests
never see each other's messages or state.
"""

import asyncio
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from racer_online.local.brokers import local_broker
from racer_online.local.redis_sentinel import LocalSentinel
from racer_online.local.services import EmbeddedRedis
from racer_online.testing import LocalDeployment, stop_process, until


class Deployment(LocalDeployment):
    """A `LocalDeployment` on a local broker (Tansu or Apache Kafka) that publishes and
    reads its topics as JSON, every decision audited, recalibrating every second."""

    def __init__(self, broker, redis_url, tmp_path: Path, scope: str):
        super().__init__(
            broker_url=broker.url, bootstrap=broker.bootstrap, redis_url=redis_url,
            directory=tmp_path, scope=scope, replication=broker.replication,
            embedded_broker=False,  # the broker's own env() says which fetch wait it needs
            # An unknown scope is dead-lettered at once here (the grace a rolling deploy
            # gets is tested on its own, test_rolling_deploy.py).
            env=broker.env() | {"RACER_AUDIT_RATE": "1.0", "RACER_RECALIBRATE_INTERVAL_S": "1",
                                "RACER_UNKNOWN_SCOPE_GRACE_S": "0"},
        )  # fmt: skip
        self.tmp_path = tmp_path
        self.broker = broker

    def write_scopes(self, models, *, alpha=0.1, delta=0.1, rule="cumulative", miss="answerable"):
        super().write_scopes(models, alpha=alpha, delta=delta, rule=rule, miss=miss)

    async def create_topics(self, config=None):
        await super().create_topics(config)
        led = getattr(self.broker, "everywhere_led", None)  # a cluster: every node knows them
        if led is not None:
            topics = list(self.topics.values())
            await until(lambda: led(topics, self.partitions), timeout=30,
                        what="every node to know the topics")  # fmt: skip

    async def send(self, topic, values, *, keys=None):
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = []
            for i, value in enumerate(values):
                raw = value if isinstance(value, bytes) else json.dumps(value).encode()
                key = (
                    keys[i]
                    if keys
                    else (value.get("query_id") if isinstance(value, dict) else None)
                )
                futures.append(
                    await producer.send(
                        self.topics[topic], raw, key=key.encode() if isinstance(key, str) else key
                    )
                )
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def collect(self, topic, count, *, timeout=60.0, until=None, placed=False):
        """Read ``topic`` from the start until ``count`` messages (or ``until``) or timeout;
        ``placed``: (partition, key, message) for each, the topic's partition count too."""
        consumer = AIOKafkaConsumer(
            self.topics[topic],
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        got = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                got += [(m.partition, m.key, json.loads(m.value)) if placed else json.loads(m.value)
                        for msgs in batch.values() for m in msgs]  # fmt: skip
                if until is not None and got and until(got):
                    break
            partitions = consumer.partitions_for_topic(self.topics[topic])
        finally:
            await consumer.stop()
        return (got, len(partitions)) if placed else got

    def kill(self, proc, sig=signal.SIGKILL):
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace=0)


@pytest.fixture(scope="session")
def router_file(tmp_path_factory):
    """A text router trained on 40% of the shipped data, once per session."""
    from racer_online.apps.cli.training import train_router_command

    out = tmp_path_factory.mktemp("router") / "router"
    train_router_command(None, out, "text", seed=0, train_fraction=0.4)
    return out.with_suffix(".json")


@pytest.fixture
async def deployment(request, broker, redis_url, redis_ns, tmp_path):
    """Workers on the session's broker and Redis; ``@pytest.mark.topic_config(**config)``
    creates the topics with that config."""
    made = Deployment(broker, redis_url, tmp_path, redis_ns)
    marker = request.node.get_closest_marker("topic_config")
    await made.create_topics(marker.kwargs if marker else None)
    yield made
    made.stop()


# -- Fault tests: services of the test's own ------------------------------------------------


class FaultServices:
    """A broker (the session's kind, or ``kind``/``nodes``) and an append-only Redis that
    only this test uses, so it may kill, pause and restart them without touching the
    session's services."""

    def __init__(self, tmp_path: Path, kind: str, nodes: int = 1):
        for name in ("broker", "redis"):
            (tmp_path / name).mkdir()
        self.broker = local_broker(kind, nodes=nodes, workdir=tmp_path / "broker")
        self.redis = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")

    def stop(self):
        self.broker.stop()
        self.redis.stop()


@pytest.fixture
def fault_services(request, tmp_path, monkeypatch, broker_kind):
    """`FaultServices`; ``@pytest.mark.parametrize("fault_services", [("apache", 3)],
    indirect=True)`` asks for another broker than the session's kind."""
    monkeypatch.delenv("RACER_REDIS_URL", raising=False)  # start a Redis that may be restarted
    kind, nodes = getattr(request, "param", (broker_kind, 1))
    services = FaultServices(tmp_path, kind, nodes)
    try:
        services.broker.start()
        services.redis.start()
        yield services
    finally:
        services.stop()


async def counting_deployment(broker, redis_url: str, tmp_path: Path) -> Deployment:
    """A `Deployment` with the drift monitor off, so that no window record is ever trimmed
    (the fault tests count every record)."""
    made = Deployment(broker, redis_url, tmp_path, f"fault-{uuid.uuid4().hex[:12]}")
    made.env |= {"RACER_MONITOR": "false"}
    await made.create_topics()
    return made


@pytest.fixture
async def fault_deployment(fault_services, tmp_path):
    """Like `deployment`, on `fault_services` (`counting_deployment`)."""
    made = await counting_deployment(fault_services.broker, fault_services.redis.url, tmp_path)
    yield made
    made.stop()


@pytest.fixture
def replicated_redis(request, tmp_path):
    """A primary, its replica and three sentinels of this test's own (`LocalSentinel`);
    ``@pytest.mark.parametrize("replicated_redis", [0], indirect=True)``: no sentinels."""
    with LocalSentinel(tmp_path / "replicated", sentinels=getattr(request, "param", 3)) as made:
        yield made


@pytest.fixture
async def failover_deployment(fault_services, replicated_redis, tmp_path):
    """`counting_deployment` on `fault_services`' broker and `replicated_redis`: by its
    ``redis+sentinel://`` URL, or without sentinels by the primary's ``redis://`` URL."""
    redis = replicated_redis
    made = await counting_deployment(
        fault_services.broker, redis.url if redis.sentinels else redis.primary_url, tmp_path
    )
    yield made
    made.stop()


# -- Secured services: TLS, SASL and ACLs on real servers -----------------------------------


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    """A CA, a loopback server certificate it signed, and an unrelated CA (openssl, now)."""
    from racer_online.local.tls import make_certificates

    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def secured_kafka(certificates, tmp_path_factory):
    """Apache Kafka with a SASL_SSL listener and a SCRAM-SHA-512 user (stored at format time)."""
    from racer_online.local.kafka import ApacheKafka, SaslSsl

    users = {"racer": "racer-kafka-secret"}
    broker = ApacheKafka(workdir=tmp_path_factory.mktemp("secured-kafka"),
                         sasl_ssl=SaslSsl(certificates, users))  # fmt: skip
    with broker:
        yield broker


@pytest.fixture(scope="session")
def secured_redis(certificates, tmp_path_factory):
    """redis-server on TLS only (``port 0``), its default user off, one ACL user."""
    from racer_online.local.secured import SecuredRedis

    with SecuredRedis(certificates, workdir=tmp_path_factory.mktemp("secured-redis")) as server:
        yield server


@pytest.fixture
async def secured_deployment(secured_kafka, secured_redis, tmp_path):
    """Like `deployment`, with the workers on the SASL_SSL listener and the TLS Redis."""
    import uuid

    made = Deployment(secured_kafka, secured_redis.url, tmp_path, f"sec-{uuid.uuid4().hex[:10]}")
    made.env |= secured_redis.env()  # RACER_KAFKA_SECURITY__* came with the broker's env()
    await made.create_topics()
    yield made
    made.stop()
