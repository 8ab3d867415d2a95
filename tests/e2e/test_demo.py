"""`racer-online demo`: Ctrl-C in the middle stops everything it started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racer_online.testing import ProcessStat

pytestmark = pytest.mark.e2e


def ctrl_c_as_in_a_terminal() -> None:
    """Children of a background shell start with SIGINT ignored; a terminal's do not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = ProcessStat.read(int(entry.name))
            if stat is not None:
                children.setdefault(stat.ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "racer_online", "demo", "--json", "--out", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    started: set[int] = set()
    while time.monotonic() < deadline:  # broker, Redis and the worker are all up
        started = descendants(demo.pid)
        log = tmp_path / "worker-0.log"
        if len(started) >= 3 and log.exists() and b"assigned partitions" in log.read_bytes():
            break
        assert demo.poll() is None, demo.stderr.read()
        time.sleep(0.5)
    else:
        pytest.fail("the demo's services never came up")
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode != 0
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while any(ProcessStat.alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in started if ProcessStat.alive(pid)], "processes left behind"


async def users_topics_and_groups(bootstrap: str) -> tuple[dict[str, int], list[str]]:
    """Every topic's end offsets in all, and the consumer groups, of the user's broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if not t.startswith("__"))
        ends = {}
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends[topic] = sum((await consumer.end_offsets(tps)).values())
        return ends, sorted(g[0] for g in await admin.list_consumer_groups())
    finally:
        await consumer.stop()
        await admin.close()


async def test_the_demo_leaves_the_exported_broker_and_redis_untouched(tmp_path, broker):
    from aiokafka import AIOKafkaProducer

    from racer_online.local.services import EmbeddedRedis
    from racer_online.store import keys
    from racer_online.store.connection import connect_sync

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:  # the user's queries, on the topic the demo routes from
        for i in range(20):
            await producer.send_and_wait("racer.queries", b'{"query_id": "mine-%d"}' % i)
    finally:
        await producer.stop()
    (tmp_path / "redis").mkdir()
    with EmbeddedRedis(data_dir=tmp_path / "redis", from_environment=False) as users_redis:
        with connect_sync(users_redis.url) as client:  # the user's scope `default`
            client.set(keys.threshold("default"), b"the user's threshold")
            client.xadd(keys.window("default"), {"r": b"the user's record"})
            before = {key: client.dump(key) for key in client.scan_iter()}
        topics_before = await users_topics_and_groups(broker.bootstrap)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")} | {
            "RACER_KAFKA_BROKER": broker.url, "RACER_REDIS_URL": users_redis.url,
        }  # fmt: skip
        demo = subprocess.run(
            [sys.executable, "-m", "racer_online", "demo", "--json", "--per-phase", "30",
             "--out", str(tmp_path / "demo")],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stderr
        assert ("racer-online: ignoring the exported RACER_KAFKA_BROKER and RACER_REDIS_URL"
                in demo.stderr.splitlines()[0]), demo.stderr  # fmt: skip
        with connect_sync(users_redis.url) as client:
            after = {key: client.dump(key) for key in client.scan_iter()}
    assert after == before
    assert await users_topics_and_groups(broker.bootstrap) == topics_before


def test_off_a_terminal_the_demo_prints_clean_plain_text_and_tidies_up(tmp_path):
    """Into a pipe: no live view, no progress bar, no cut label; the table flags a phase over
    alpha and explains its columns; the log it names exists; no Faust folder is left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    done = subprocess.run(
        [sys.executable, "-m", "racer_online", "demo", "--per-phase", "60", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "…" not in done.stdout and "…" not in done.stderr
    assert "\r" not in done.stderr and "replaying" not in done.stderr  # no progress bar
    assert done.stdout.startswith("Replay: alpha = 0.1, delta = 0.1")
    assert "coverage: share of queries whose set holds a correct model" in done.stdout
    phases = done.stdout.split("\n")[2:]
    flagged = [line for line in phases if "> alpha" in line]
    assert all(line.split()[0] for line in flagged)  # on the racer rows, named by phase
    named = done.stderr.strip().splitlines()[-1]
    assert named == f"report in {tmp_path / 'report'}, worker log in {tmp_path / 'worker-0.log'}"
    assert (tmp_path / "worker-0.log").exists() and (tmp_path / "report" / "report.html").exists()
    assert not list(tmp_path.glob("racer-demo-*-data"))
