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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from benchmarks._harness import Deployment, Services, Traffic, services, wait_ready
from benchmarks._load import MODELS, PARTITIONS, collect, publish, tail_consumer
from benchmarks._machine import cpu_pressure, cpu_seconds, machine_facts
from benchmarks.lag import LagSampler
from benchmarks.stream_raw import (
    Latencies,
    broker_fetch,
    floor_run,
    probe_latency,
    raw_latency,
    raw_run,
)
from benchmarks.stream_report import broker_fact, show, side_by_side, table_rows
from racer_online.messages import decision_key
from racer_online.store import keys
from racer_online.store.codec import candidate_keys
from racer_online.store.records import PendingRecord

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
