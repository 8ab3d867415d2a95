"""The stream benchmark's references (`benchmarks.stream`): (1) the raw aiokafka pass-through
and the Faust floor, (3) the latency probe both they and the worker are measured with, and
one hop's latency against the broker's fetch wait and a partition's length."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import Popen

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from benchmarks._floors import start_faust_floor, start_passthrough
from benchmarks._harness import Services, services
from benchmarks._load import (
    PARTITIONS,
    Collected,
    LatencyProbe,
    Traffic,
    collect,
    paced_send,
    producer,
    publish,
    tail_consumer,
)
from benchmarks._machine import cpu_pressure, cpu_seconds, median, percentile
from benchmarks.stream_report import _ms

# -- (1) raw pass-through ----------------------------------------------------------------------


async def raw_topics(bootstrap: str) -> dict[str, str]:
    base = f"bench-raw-{uuid.uuid4().hex[:8]}"
    topics = {"queries": f"{base}.a", "out": f"{base}.b", "feedback": f"{base}.unused"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics.values()])
    finally:
        await admin.close()
    return topics


async def _copied(
    svc: Services, n: int, label: str, start: Callable[[Services, str, str], Popen[bytes]]
) -> Collected:
    """What a copying process (``start``) moved of N pre-published queries to its output."""
    bootstrap = svc.broker.bootstrap
    topics = await raw_topics(bootstrap)
    ids, queries, _ = Traffic(label, seed=1).batch(n)
    await publish(bootstrap, topics["queries"], ids, queries)
    out = await tail_consumer(bootstrap, topics["out"], from_start=True)
    proc = start(svc, topics["queries"], topics["out"])
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        return await collect(out, n, timeout=600, cpu_of=[proc.pid], alive=alive)
    finally:
        proc.terminate()
        proc.wait(30)
        await out.stop()


def _complete(got: Collected, n: int) -> bool:
    return got.count >= n and got.first_ts_ms is not None and got.last_ts_ms is not None


async def raw_run(svc: Services, n: int) -> dict[str, float]:
    """(1) a raw aiokafka pass-through process on N pre-published queries."""
    got = await _copied(svc, n, "raw", start_passthrough)
    if not _complete(got, n):
        raise RuntimeError(f"raw pass-through moved {got.count}/{n}")
    span = (got.last_ts_ms - got.first_ts_ms) / 1000  # type: ignore[operator]
    return {"raw_msgs": n / span, "raw_cpu_us": 1e6 * got.cpu_used()[0] / n}


async def raw_latency(svc: Services, args: argparse.Namespace) -> dict[str, float]:
    """(3) reference: the pass-through's publish-to-output latency, fresh topics per segment."""
    bootstrap = svc.broker.bootstrap
    pooled = Latencies()
    for _ in range(args.latency_segments):
        topics = await raw_topics(bootstrap)
        proc = start_passthrough(svc, topics["queries"], topics["out"])
        try:
            traffic = Traffic("raw", seed=4)
            await wait_flowing(bootstrap, topics["queries"], topics["out"], traffic)
            pooled.add(await probe_latency(
                bootstrap, topics, traffic, args.rate, args.latency_seconds,
                output=topics["out"], cpu_of=proc.pid,
            ))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(30)
    return {f"raw_{k}": v for k, v in pooled.summary().items()}


async def floor_run(svc: Services, n: int) -> dict[str, float]:
    """The Faust floor (see ``faust_floor_app``) on N pre-published queries."""
    got = await _copied(svc, n, "floor", start_faust_floor)
    if not _complete(got, n):
        return {}
    span = (got.last_ts_ms - got.first_ts_ms) / 1000  # type: ignore[operator]
    return {"floor_msgs": n / span, "floor_cpu_us": 1e6 * got.cpu_used()[0] / n}


# -- (3) latency probe -------------------------------------------------------------------------


@dataclass
class Latencies:
    """Latency samples (seconds) pooled over segments, and the worker's CPU share."""

    total: list[float] = field(default_factory=list)
    inbound: list[float] = field(default_factory=list)  # publish -> decided
    outbound: list[float] = field(default_factory=list)  # decided -> received
    cpu: list[float] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    lag: list[int] = field(default_factory=list)  # the route group's, sampled (workers only)

    def add(self, other: Latencies) -> None:
        self.total += other.total
        self.inbound += other.inbound
        self.outbound += other.outbound
        self.cpu += other.cpu
        self.sent += other.sent
        self.lost += other.lost
        self.lag += other.lag

    def summary(self) -> dict[str, float]:
        ms = {"": self.total, "in_": self.inbound, "out_": self.outbound}
        out = {f"{name}p{q}_ms": 1000 * percentile(values, q)
               for name, values in ms.items() for q in (50, 99)}  # fmt: skip
        lag = (
            {"lag_p50": percentile(self.lag, 50), "lag_max": float(max(self.lag))}
            if self.lag
            else {}
        )
        return out | lag | {"latency_cpu": median(self.cpu), "latency_sent": self.sent,
                            "latency_lost": self.lost}  # fmt: skip


async def probe_latency(
    bootstrap: str, topics: dict[str, str], traffic: Traffic, rate: float, seconds: float,
    *, output: str, warmup: float = 2.0, cpu_of: int | None = None,
) -> Latencies:  # fmt: skip
    """Paced queries for ``warmup + seconds``; the latencies of the last ``seconds``."""
    consumer = await tail_consumer(bootstrap, output, from_start=False)
    probe, stop = LatencyProbe(), asyncio.Event()
    reader = asyncio.create_task(probe.consume(consumer, stop))
    prod = await producer(bootstrap)
    try:
        started = time.time()
        sending = paced_send(prod, topics, traffic, probe, rate=rate, seconds=warmup + seconds)
        cpu_task = asyncio.create_task(_cpu_share(cpu_of, warmup, seconds))
        sent = await sending
        cpu = await cpu_task
        drain_until = time.monotonic() + 5.0
        while probe.sent_at and time.monotonic() < drain_until:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await reader
        await prod.stop()
        await consumer.stop()
    inbound, outbound = probe.split_window(started + warmup, float("inf"))
    return Latencies(
        probe.window(started + warmup, float("inf")), inbound, outbound, [cpu],
        sent, len(probe.sent_at),
    )  # fmt: skip


async def wait_flowing(
    bootstrap: str, src: str, dst: str, traffic: Traffic, timeout: float = 60.0
) -> None:
    """Send one query at a time to ``src`` until something comes out of ``dst``."""
    consumer = await tail_consumer(bootstrap, dst, from_start=False)
    prod = await producer(bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ids, queries, _ = traffic.batch(1)
            await prod.send_and_wait(src, queries[0], key=ids[0].encode())
            if (await collect(consumer, 1, timeout=1.0)).count:
                return
    finally:
        await prod.stop()
        await consumer.stop()
    raise RuntimeError(f"nothing came out of {dst} within {timeout} s")


async def _cpu_share(pid: int | None, warmup: float, seconds: float) -> float:
    """Cores a process used over ``seconds`` after ``warmup`` (NaN without a pid)."""
    await asyncio.sleep(warmup)
    before, at = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - at)


# -- the broker's own fetch latency ----------------------------------------------------------


async def broker_fetch(args: argparse.Namespace, console: Console) -> None:
    """One hop (producer -> group-less consumer) at ``--rate`` for 5 s per cell: the
    latency a consumer's fetch wait and a partition's length cost on the broker itself."""
    with services() as svc:
        bootstrap = svc.broker.bootstrap
        headers = ("records in topic", "fetch wait, ms", "received", "p50, ms", "p99, ms",
                   "broker CPU, cores", "CPU pressure")  # fmt: skip
        rows = []
        topics = await raw_topics(bootstrap)
        filler = Traffic("filler", seed=6)
        held = 0
        for size, waits in ((0, (1, 5, 100, 500, 1500)), (40_000, (1, 100)), (100_000, (1, 100))):
            while held < size:
                ids, queries, _ = filler.batch(20_000)
                await publish(bootstrap, topics["queries"], ids, queries)
                held += 20_000
            for wait in waits:
                consumer = await tail_consumer(
                    bootstrap, topics["queries"], from_start=False, fetch_max_wait_ms=wait
                )
                probe, stop = LatencyProbe(), asyncio.Event()
                reader = asyncio.create_task(probe.consume(consumer, stop))
                prod = await producer(bootstrap)
                started, cpu = time.time(), cpu_seconds(svc.broker.pid)
                sent = await paced_send(prod, topics, Traffic("hop", seed=wait), probe,
                                        rate=args.rate, seconds=5.0)  # fmt: skip
                await asyncio.sleep(1.0)
                stop.set()
                await reader
                await prod.stop()
                await consumer.stop()
                cores = (cpu_seconds(svc.broker.pid) - cpu) / (time.time() - started)
                held += sent
                ms = [1000 * lat for lat in probe.window(started + 1.0, float("inf"))]
                rows.append((f"{size:,}", str(wait), f"{probe.received:,} / {sent:,}",
                             _ms(percentile(ms, 50)), _ms(percentile(ms, 99)), f"{cores:.2f}",
                             cpu_pressure().split()[0]))  # fmt: skip
                console.print(" | ".join(rows[-1]))
    table = Table(*headers, title=f"One hop at {args.rate:,.0f} msg/s on the embedded broker")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if args.markdown:
        print("\n| " + " | ".join(headers) + " |\n|" + "---:|" * len(headers))
        for row in rows:
            print("| " + " | ".join(row) + " |")
