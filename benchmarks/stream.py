"""Stream-worker benchmark: one real worker on the embedded broker and Redis.

Per repetition, in one run and against the same services:

1. raw: an aiokafka consume-and-produce pass-through process on N pre-published query
   payloads (topic A -> topic B): rate from the first to the last record written to B;
   plus, for reference, a Faust agent that batches and sends but routes nothing;
2. route: ``python -m racer_online worker`` on N pre-published queries (9 model scores),
   rate from the first to the last decision (record timestamps on the decisions topic);
3. latency: publish-to-decision p50/p99 at a steady rate (default 1,000 q/s), in segments
   of 10 s, each on a fresh deployment (Tansu's fetch cost grows with a partition's
   length); the same for the raw pass-through as the broker's own floor;
4. feedback join: N full-label feedback events, pre-published while the worker is stopped,
   then the worker restarted; events/s from the first label seen in Redis to the last;
5. Redis bytes per window record: ``MEMORY USAGE`` of the window stream over its length,
   cross-checked by the ``used_memory`` delta of a ``COPY`` of the stream.

    python -m benchmarks.stream [--n 100000] [--reps 3] [--markdown]
    python -m benchmarks.stream --quick          # a short smoke run
    python -m benchmarks.stream --worker-only --worker-pythonpath /tmp/patched  # compare
    python -m benchmarks.stream --broker-fetch   # the broker's own fetch latency
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from benchmarks._harness import (
    MODELS,
    PARTITIONS,
    Deployment,
    LatencyProbe,
    Services,
    Traffic,
    collect,
    cpu_pressure,
    cpu_seconds,
    machine_facts,
    median,
    paced_send,
    percentile,
    producer,
    publish,
    services,
    start_faust_floor,
    start_passthrough,
    tail_consumer,
    wait_ready,
)
from benchmarks.lag import LagSampler
from benchmarks.stream_report import _ms, broker_fact, show, side_by_side, table_rows
from racer_online.messages import decision_key
from racer_online.store import keys
from racer_online.store.codec import candidate_keys
from racer_online.store.records import PendingRecord

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


async def raw_run(svc: Services, n: int) -> dict[str, float]:
    """(1) a raw aiokafka pass-through process on N pre-published queries."""
    bootstrap = svc.broker.bootstrap
    topics = await raw_topics(bootstrap)
    ids, queries, _ = Traffic("raw", seed=1).batch(n)
    await publish(bootstrap, topics["queries"], ids, queries)
    out = await tail_consumer(bootstrap, topics["out"], from_start=True)
    proc = start_passthrough(svc, topics["queries"], topics["out"])
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        got = await collect(out, n, timeout=600, cpu_of=[proc.pid], alive=alive)
    finally:
        proc.terminate()
        proc.wait(30)
        await out.stop()
    if got.count < n or got.first_ts_ms is None or got.last_ts_ms is None:
        raise RuntimeError(f"raw pass-through moved {got.count}/{n}")
    span = (got.last_ts_ms - got.first_ts_ms) / 1000
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
    bootstrap = svc.broker.bootstrap
    topics = await raw_topics(bootstrap)
    ids, queries, _ = Traffic("floor", seed=1).batch(n)
    await publish(bootstrap, topics["queries"], ids, queries)
    out = await tail_consumer(bootstrap, topics["out"], from_start=True)
    proc = start_faust_floor(svc, topics["queries"], topics["out"])
    try:
        got = await collect(out, n, timeout=600, cpu_of=[proc.pid])
    finally:
        proc.terminate()
        proc.wait(30)
        await out.stop()
    if got.count < n or got.first_ts_ms is None or got.last_ts_ms is None:
        return {}
    span = (got.last_ts_ms - got.first_ts_ms) / 1000
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


# -- (2) route, (4) feedback, (5) memory --------------------------------------------------------


async def worker_run(
    svc: Services, args: argparse.Namespace, console: Console, rep: int
) -> dict[str, float]:
    n = args.n
    dep = Deployment(svc, label="stream", env=dict(kv.split("=", 1) for kv in args.worker_env))
    dep.pythonpath = args.worker_pythonpath
    await dep.create_topics()

    def profile(phase: str) -> None:
        if args.profile:
            dep.profile(Path(args.profile) / f"{phase}-{rep + 1}.txt")

    traffic = Traffic(dep.scope, seed=2)
    ids, queries, feedback = traffic.batch(n)
    client = dep.redis_client()
    result: dict[str, float] = {}
    try:
        used_before = client.info("memory")["used_memory"]
        await publish(dep.bootstrap, dep.topics["queries"], ids, queries)
        decisions = await tail_consumer(dep.bootstrap, dep.topics["decisions"], from_start=True)
        dep.start_worker()
        profile("route")
        got = await collect(
            decisions,
            n,
            timeout=600,
            wanted={decision_key(dep.scope, q) for q in ids},
            cpu_of=[dep.worker_pid, svc.redis_pid],
            alive=dep.alive,
        )
        dep.stop_profiler()
        await decisions.stop()
        if got.count < n:
            raise RuntimeError(f"{got.count}/{n} decisions:\n{dep.log_tail()}")
        span = (got.last_ts_ms - got.first_ts_ms) / 1000
        result["route_msgs"] = n / span
        worker_cpu, redis_cpu = got.cpu_used()
        result |= {"route_cpu_us": 1e6 * worker_cpu / n, "route_redis_us": 1e6 * redis_cpu / n}
        result["pending_bytes"] = (client.info("memory")["used_memory"] - used_before) / n
        console.print(f"  route: {n} decisions in {span:.2f} s")

        # (4) feedback: a backlog for a restarted worker, timed by what Redis shows
        dep.stop_worker()
        first_keys, last_keys = await publish(dep.bootstrap, dep.topics["feedback"], ids, feedback)
        dep.start_worker()
        profile("feedback")
        joined, cpu = await time_feedback(
            client, dep.scope, first_keys, last_keys,
            cpu_of=[dep.worker_pid, svc.redis_pid], alive=dep.alive,
        )  # fmt: skip
        dep.stop_profiler()
        result["feedback_msgs"] = n / joined
        result |= {"feedback_cpu_us": 1e6 * cpu[0] / n, "feedback_redis_us": 1e6 * cpu[1] / n}
        result["graded_bytes"] = (client.info("memory")["used_memory"] - used_before) / n
        console.print(f"  feedback: {n} events joined in {joined:.2f} s")

        # (5) window memory
        window = keys.window(dep.scope)
        length = client.xlen(window)
        usage = client.memory_usage(window, samples=0) or 0
        copy = window + "-copy"
        used = client.info("memory")["used_memory"]
        client.copy(window, copy)
        copied = client.info("memory")["used_memory"] - used
        client.delete(copy)
        result |= {"window_len": length, "window_bytes": usage / max(length, 1),
                   "window_bytes_copy": copied / max(length, 1)}  # fmt: skip

    finally:
        dep.stop_worker()
        client.close()
        dep.delete_keys()
    return result


async def two_workers_run(svc: Services, args: argparse.Namespace) -> dict[str, float]:
    """(2) route with two workers on 2N pre-published queries. They join the group one
    after the other, so the rate counts only the decisions made once the group is stable
    with both members (before that, one routes alone)."""
    n = 2 * args.n
    dep = Deployment(svc, label="two", env=dict(kv.split("=", 1) for kv in args.worker_env))
    dep.pythonpath = args.worker_pythonpath
    await dep.create_topics()
    ids, queries, _ = Traffic(dep.scope, seed=3).batch(n)
    await publish(dep.bootstrap, dep.topics["queries"], ids, queries)
    decisions = await tail_consumer(dep.bootstrap, dep.topics["decisions"], from_start=True)
    first = dep.start_worker()
    try:
        dep.start_worker()
        both = asyncio.create_task(group_stable(dep.bootstrap, f"racer-{dep.scope}.route", 2))
        alive = lambda: first.poll() is None and dep.alive()  # noqa: E731
        wanted = {decision_key(dep.scope, q) for q in ids}
        got = await collect(decisions, n, timeout=600, wanted=wanted, alive=alive)
        stable_ms = await both
    finally:
        await decisions.stop()
        dep.stop_worker()
        dep.worker = first
        dep.stop_worker()
        dep.delete_keys()
    after = [ts for ts in got.timestamps if ts >= stable_ms]
    if got.count < n or len(after) < 2:
        raise RuntimeError(
            f"two workers: {got.count}/{n} decisions, {len(after)} after both joined"
        )
    return {"route2_msgs": len(after) / ((max(after) - stable_ms) / 1000)}


async def group_stable(bootstrap: str, group: str, members: int, timeout: float = 120.0) -> float:
    """When (ms since the epoch) ``group`` is first seen stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (described,) = await admin.describe_consumer_groups([group])
            (state,) = described.groups
            if state[2] == "Stable" and len(state[5]) == members:  # (error, id, state, ...)
                return time.time() * 1000
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    raise RuntimeError(f"group {group} not stable with {members} members in {timeout} s")


async def worker_latency(svc: Services, args: argparse.Namespace, rep: int) -> dict[str, float]:
    """(3) publish-to-decision latency, each segment on a fresh deployment: Tansu's fetch
    cost grows with the length of a partition (docs/benchmarks.md)."""
    pooled = Latencies()
    for segment in range(args.latency_segments):
        dep = Deployment(svc, label="latency", env=dict(kv.split("=", 1) for kv in args.worker_env))
        dep.pythonpath = args.worker_pythonpath
        await dep.create_topics()
        dep.start_worker()
        try:
            traffic = Traffic(dep.scope, seed=5)
            await wait_ready(dep, traffic)
            if args.profile:
                dep.profile(Path(args.profile) / f"latency-{rep + 1}-{segment + 1}.txt")
            group = f"racer-{dep.scope}.route"
            async with LagSampler(dep.bootstrap, group, dep.topics["queries"], PARTITIONS) as lag:
                measured = await probe_latency(
                    dep.bootstrap,
                    dep.topics,
                    traffic,
                    args.rate,
                    args.latency_seconds,
                    output=dep.topics["decisions"],
                    cpu_of=dep.worker_pid,
                )
            measured.lag = lag.samples
            pooled.add(measured)
        finally:
            dep.stop_worker()
            dep.delete_keys()
    return pooled.summary()


async def time_feedback(
    client: Any, scope: str, firsts: list[str], lasts: list[str], *,
    cpu_of: list[int | None], alive: Callable[[], bool],
) -> tuple[float, list[float]]:  # fmt: skip
    """Seconds from the first label of any partition's first event in Redis to the last
    label of every partition's last event (each partition is processed in order), and the
    CPU seconds of the ``cpu_of`` processes in between."""
    last = 1 << (len(MODELS) - 1)  # the last model's bit in a record's known mask

    def graded(ids: list[str]) -> list[bool]:
        slots = client.hgetall(keys.slots(scope))
        found = []
        for q in ids:
            hash_, candidates = candidate_keys(scope, q, slots)
            values = [client.hget(key, hash_) for key in candidates]
            hit = next((v for v in values if v is not None), None)
            found.append(
                hit is not None and bool(PendingRecord.unpack(hit, len(MODELS)).known & last)
            )
        return found

    deadline = time.monotonic() + 600
    start = None
    while time.monotonic() < deadline and alive():
        now = time.monotonic()
        if start is None and any(graded(firsts)):
            start, cpu_start = now, [cpu_seconds(pid) for pid in cpu_of]
        if start is not None and all(graded(lasts)):
            return now - start, [cpu_seconds(p) - c for p, c in zip(cpu_of, cpu_start, strict=True)]
        await asyncio.sleep(0.01)
    raise RuntimeError("feedback not joined within 600 s, or the worker died")


# -- runs ----------------------------------------------------------------------------------------


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


async def measure(kind: str, args: argparse.Namespace, console: Console) -> tuple[
    dict[str, str], list[dict[str, float]]
]:  # fmt: skip
    """Every repetition on one broker kind: the machine's facts and each repetition's values."""
    with services(kind) as svc:
        facts = machine_facts(svc.redis.url)
        facts["broker"] = broker_fact(svc.broker)
        facts["redis"] = f"{svc.redis.kind} ({svc.redis.url})"
        for key, value in facts.items():
            console.print(f"[bold]{key}[/]: {value}")
        reps: list[dict[str, float]] = []
        for rep in range(args.reps):
            console.print(f"[bold]{kind}: repetition {rep + 1}/{args.reps}[/]")
            values: dict[str, float] = {}
            if not args.worker_only:
                values |= await raw_run(svc, args.n)
                values |= await raw_latency(svc, args)
                values |= await floor_run(svc, args.n)
                console.print(f"  raw and floor: { {k: round(v, 2) for k, v in values.items()} }")
            values |= await worker_run(svc, args, console, rep)
            values |= await two_workers_run(svc, args)
            values |= await worker_latency(svc, args, rep)
            values["route_ratio"] = values["route_msgs"] / values.get("raw_msgs", float("nan"))
            console.print(f"  worker: { {k: round(v, 2) for k, v in values.items()} }")
            reps.append(values)
        facts["CPU pressure at end"] = cpu_pressure()
    return facts, reps


async def run(args: argparse.Namespace, console: Console) -> None:
    by_broker: dict[str, list[dict[str, float]]] = {}
    for kind in args.broker.split(","):
        facts, by_broker[kind] = await measure(kind, args, console)
        reps = by_broker[kind]
        headers = ["metric", *(f"run {i + 1}" for i in range(len(reps))), "median", "target", "met"]
        title = (
            f"{facts['broker']}: one worker, 9 models, {PARTITIONS} partitions, audit rate 0.1, "
            f"N = {args.n:,}, latency at {args.rate:,.0f} q/s, "
            f"{args.latency_segments} x {args.latency_seconds:.0f} s"
        )
        if args.worker_env or args.worker_pythonpath:
            title += (
                f"; worker: {' '.join(args.worker_env)} {args.worker_pythonpath or ''}".rstrip()
            )
        if args.markdown:
            print("\n" + "\n".join(f"- {key}: {value}" for key, value in facts.items()))
        show(console, title, headers, table_rows(reps), args.markdown)
    if len(by_broker) > 1:
        headers = ["metric (median)", *by_broker, "target"]
        show(console, "Brokers side by side", headers, side_by_side(by_broker), args.markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages per throughput run")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency probe, queries/s")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="per segment")
    parser.add_argument(
        "--latency-segments",
        type=int,
        default=3,
        help="latency segments per repetition, each on fresh topics",
    )
    parser.add_argument(
        "--broker", default="apache,tansu",
        help="comma-separated brokers, each measured in turn: apache (Java 17), tansu",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: N=5000, 1 rep, 5 s")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the worker, e.g. RACER_BATCH_TIMEOUT_S=0.005",
    )
    parser.add_argument("--worker-pythonpath", help="PYTHONPATH of the worker (a patched copy)")
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="skip the raw and Faust-floor references (to compare workers)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the worker into DIR (raw)")
    parser.add_argument(
        "--broker-fetch",
        action="store_true",
        help="only measure one hop's latency vs fetch wait and topic length",
    )
    args = parser.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.n, args.reps, args.latency_seconds, args.latency_segments = 5000, 1, 5.0, 1
    console = Console(width=None if sys.stdout.isatty() else 160)
    asyncio.run(broker_fetch(args, console) if args.broker_fetch else run(args, console))


if __name__ == "__main__":
    main()
