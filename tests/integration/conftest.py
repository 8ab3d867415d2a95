"""A deployment of real workers on the session's broker and Redis, isolated per test.

Each test gets its own consumer group, topics and scope (so its Redis keys), so tests
never see each other's messages or state.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from racer_online.local.brokers import local_broker
from racer_online.local.services import EmbeddedRedis, free_port

TOPICS = ("queries", "decisions", "feedback", "thresholds", "alerts", "dlq")
PARTITIONS = 4


async def until_led(admin: AIOKafkaAdminClient, topics: list[str], timeout: float = 30.0):
    """Apache Kafka acknowledges a topic's creation before its brokers know the leaders:
    wait until the metadata shows a leader for every partition."""
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics(topics)
        if all(
            t["error_code"] == 0
            and len(t["partitions"]) == PARTITIONS
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        assert time.monotonic() < deadline, f"no leaders for {topics} after {timeout} s"
        await asyncio.sleep(0.05)


class Deployment:
    def __init__(self, broker, redis_url, tmp_path: Path, scope: str):
        self.bootstrap = broker.bootstrap
        self.replication = broker.replication  # 3 on the 3-node cluster
        self.scope = scope
        self.tmp_path = tmp_path
        self.topics = {name: f"{scope}.{name}" for name in TOPICS}
        self.workers: list[subprocess.Popen] = []
        self.env = (
            os.environ
            | {
                "RACER_REDIS_URL": redis_url,
                "RACER_APP_ID": f"racer-{scope}",
                "RACER_SCOPES_FILE": str(tmp_path / "scopes.toml"),
                "RACER_AUDIT_RATE": "1.0",
                "RACER_RECALIBRATE_INTERVAL_S": "1",
                "RACER_BROKER_SESSION_TIMEOUT_S": "2",
                "RACER_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
                "RACER_BROKER_REBALANCE_TIMEOUT_S": "2",
                "RACER_TOPICS__PARTITIONS": str(PARTITIONS),
                "RACER_LOG_LEVEL": "INFO",
            }
            | broker.env()  # its address and the fetch wait it needs
            | {f"RACER_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()}
        )

    def write_scopes(self, models, *, alpha=0.1, delta=0.1, rule="cumulative", miss="answerable"):
        lines = [
            f"[scopes.{self.scope}]",
            f"alpha = {alpha}",
            f"delta = {delta}",
            f'rule = "{rule}"',
            f'miss = "{miss}"',
            f"[scopes.{self.scope}.models]",
        ]
        lines += [f'"{m}" = {{ price = 0.1 }}' for m in models]
        (self.tmp_path / "scopes.toml").write_text("\n".join(lines) + "\n")

    async def create_topics(self, config: dict[str, str] | None = None):
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(t, PARTITIONS, self.replication, topic_configs=config or {})
                for t in self.topics.values()
            ])  # fmt: skip
            await until_led(admin, list(self.topics.values()))
        finally:
            await admin.close()

    async def group_members(self, group: str, members: int, timeout: float = 60.0) -> float:
        """Wait until the consumer group ``<app id>.<group>`` is stable with ``members``
        members (a join takes a session timeout or more on a busy machine); seconds taken."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        started = time.monotonic()
        try:
            while True:
                (described,) = await admin.describe_consumer_groups(
                    [f"{self.env['RACER_APP_ID']}.{group}"]
                )
                (state,) = (
                    described.groups
                )  # (error, group, state, protocol type, protocol, members)
                if state[2] == "Stable" and len(state[5]) == members:
                    return time.monotonic() - started
                assert time.monotonic() - started < timeout, (
                    f"{group}: {state[2]}, {len(state[5])} members"
                )
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    def start_worker(self, **env) -> subprocess.Popen:
        index = len(self.workers)
        log = open(self.tmp_path / f"worker-{index}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "racer_online", "worker"],
            env=self.env | {"RACER_WEB_PORT": str(free_port())} | env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp_path,
        )
        self.workers.append(proc)
        return proc

    def log(self, index=0) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text(errors="replace")

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

    async def collect(self, topic, count, *, timeout=60.0, until=None):
        """Read ``topic`` from the start until ``count`` messages (or ``until``) or timeout."""
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
                got += [json.loads(m.value) for msgs in batch.values() for m in msgs]
                if until is not None and got and until(got):
                    break
        finally:
            await consumer.stop()
        return got

    def kill(self, proc, sig=signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self):
        for proc in self.workers:
            if proc.poll() is None:
                try:
                    self.kill(proc, signal.SIGTERM)
                except subprocess.TimeoutExpired:
                    self.kill(proc)  # SIGKILL: leave nothing behind


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


@pytest.fixture
async def fault_deployment(fault_services, tmp_path):
    """Like `deployment`, on `fault_services`; the drift monitor is off so that no window
    record is ever trimmed (the tests count every record)."""
    import uuid

    made = Deployment(
        fault_services.broker, fault_services.redis.url, tmp_path,
        f"fault-{uuid.uuid4().hex[:12]}",
    )  # fmt: skip
    made.env |= {"RACER_MONITOR": "false"}
    await made.create_topics()
    yield made
    made.stop()
