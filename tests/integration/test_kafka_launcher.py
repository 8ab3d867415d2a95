"""The Apache Kafka launcher: a node keeps its records across a restart, Kafka 4 runs the
worker too, and a missing Java or a bad version is one line."""

import os
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from conftest import Deployment

from racer_online.local.kafka import ApacheKafka
from racer_online.local.kafka_jars import INSTALL_HINT
from racer_online.local.processes import EmbeddedServiceError

pytestmark = [pytest.mark.integration, pytest.mark.apache]

KAFKA_4 = "4.1.1"  # aiokafka 0.14 joins groups on it (JoinGroup v0/v1 came back in 4.0.1)


async def round_trip(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    """Write ``values`` (acks=all), then read the topic from its start."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value)
        await producer.flush()
    finally:
        await producer.stop()
    return await read_all(bootstrap, topic, len(values))


async def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got += [m.value for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return got


async def test_a_node_restarted_on_its_log_keeps_its_records(tmp_path):
    kafka = ApacheKafka(workdir=tmp_path).start()
    try:
        assert list(kafka.metadata([]).brokers) == [1]
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("kept", 1, 1)])
        await admin.close()
        values = [f"v{i}".encode() for i in range(100)]
        assert sorted(await round_trip(kafka.bootstrap, "kept", values)) == sorted(values)
        kafka.stop(keep_data=True)
        kafka.start()
        assert sorted(await read_all(kafka.bootstrap, "kept", 100)) == sorted(values)
    finally:
        kafka.stop()
    assert kafka.pid is None


async def test_the_worker_routes_on_kafka_4(tmp_path, redis_url, redis_ns):
    with ApacheKafka(version=KAFKA_4, workdir=tmp_path / "kafka") as kafka:
        deployment = Deployment(kafka, redis_url, tmp_path, redis_ns)
        await deployment.create_topics()
        deployment.write_scopes(["m0", "m1"])
        deployment.start_worker()
        try:
            queries = [{"query_id": f"q{i}", "scope": redis_ns, "scores": {"m0": 0.9, "m1": 0.2}}
                       for i in range(200)]  # fmt: skip
            await deployment.send("queries", queries)
            decided = await deployment.collect("decisions", 200, timeout=60)
        finally:
            deployment.stop()
    assert {d["query_id"] for d in decided} == {q["query_id"] for q in queries}, deployment.log()


def test_no_java_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn
    with pytest.raises(EmbeddedServiceError, match="needs Java 17 and Maven"):
        ApacheKafka(workdir=tmp_path).start()
    cli = [sys.executable, "-m", "racer_online", "dev-services", "--broker", "apache"]
    done = subprocess.run(cli, capture_output=True, text=True, env=os.environ, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"racer-online: error: {INSTALL_HINT}", done.stderr


@pytest.mark.parametrize("nodes, version", [(2, None), (1, "3.9"), (1, "latest")])
def test_a_bad_cluster_shape_or_version_is_one_line(nodes, version):
    with pytest.raises(EmbeddedServiceError, match=r"1 or 3 nodes|not like 3\.9\.1"):
        ApacheKafka(nodes, version=version)
