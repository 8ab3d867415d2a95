"""Load and probes of the stream benchmarks: seeded synthetic queries, publishing, group-less
consumers of every partition, collecting what arrives and paced sends with a latency probe.
Every loop here is bounded in count and in time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks._machine import cpu_seconds
from racer_online.messages import decision_key
from racer_online.scopes import load_scopes

PARTITIONS = 4  # the settings' default
MODELS = load_scopes()["default"].model_names  # the packaged 9-model catalogue
PRICES = load_scopes()["default"].prices
_started_kind = ["tansu"]  # the broker of the current `services` block, for the probes


def use_broker(kind: str) -> None:
    """Probes from now on ask for the fetch wait of this broker kind (`PROBE_FETCH_WAIT_MS`)."""
    _started_kind.append(kind)


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
