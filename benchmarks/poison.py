"""Head-of-line blocking: the other scopes' latency while 1 query in 100 is poison.

In one run and against the same Apache Kafka and Redis, a clean segment and a poisoned one,
each on a fresh deployment (its own topics and group) with the worker's defaults
(``RACER_UNKNOWN_SCOPE_GRACE_S`` 300 s, ``RACER_RETRY_DELAY_S`` 5 s): queries paced at
``--rate`` for ``--seconds`` after a warm-up, and in the poisoned segment every 100th query
names a scope no worker knows, every other one of those with a producer timestamp ten years
ahead. The figure is the valid queries' publish-to-decision p99 (one clock: the probe's),
poisoned against clean; the target is at most 1.5 times (docs/benchmarks.md).

    python -m benchmarks.poison [--rate 1000] [--seconds 20] [--reps 2] [--broker apache]
    python -m benchmarks.poison --seconds 80 --reps 1 \
        --worker-env RACER_UNKNOWN_SCOPE_GRACE_S=60 --worker-env RACER_RETRY_DELAY_S=1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks._harness import (
    Deployment,
    LatencyProbe,
    Services,
    Traffic,
    cpu_pressure,
    percentile,
    producer,
    services,
    tail_consumer,
    wait_ready,
)

TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000
TARGET_RATIO = 1.5


async def paced_with_poison(
    prod: AIOKafkaProducer, dep: Deployment, traffic: Traffic, probe: LatencyProbe, *,
    rate: float, seconds: float, poison_every: int | None,
) -> tuple[int, int]:  # fmt: skip
    """Queries at ``rate`` for ``seconds``, every ``poison_every``-th of an unknown scope
    (every second one of those dated ten years ahead); returns (valid, poison) sent."""
    topic, total = dep.topics["queries"], int(rate * seconds)
    started, sent, poison = time.monotonic(), 0, 0
    unacked: list[asyncio.Future[Any]] = []
    while sent < total:
        now = time.monotonic()
        for _ in range(min(total, int((now - started) * rate) + 1) - sent):
            sent += 1
            if poison_every and sent % poison_every == 0:
                poison += 1
                value = json.dumps({"query_id": f"poison-{poison}", "scope": "no-such-scope",
                                    "scores": {"m0": 0.5}}).encode()  # fmt: skip
                ahead = TEN_YEARS_MS if poison % 2 else 0
                unacked.append(
                    await prod.send(
                        topic,
                        value,
                        key=f"poison-{poison}".encode(),
                        timestamp_ms=int(time.time() * 1000) + ahead,
                    )
                )
                continue
            ids, queries, _ = traffic.batch(1)
            key = ids[0].encode()
            probe.sent_at[key] = time.time()
            unacked.append(await prod.send(topic, queries[0], key=key))
        if len(unacked) > 2000:
            await asyncio.gather(*unacked)
            unacked.clear()
        await asyncio.sleep(max(0.0, 0.005 - (time.monotonic() - now)))
    await asyncio.gather(*unacked)
    return sent - poison, poison


async def segment(svc: Services, args: argparse.Namespace, poison_every: int | None) -> dict:
    env = dict(kv.split("=", 1) for kv in args.worker_env)
    dep = Deployment(svc, label="poison" if poison_every else "clean", env=env)
    await dep.create_topics()
    dep.start_worker()
    try:
        traffic = Traffic(dep.scope, seed=7)
        await wait_ready(dep, traffic)
        consumer = await tail_consumer(dep.bootstrap, dep.topics["decisions"], from_start=False)
        probe, stop = LatencyProbe(), asyncio.Event()
        reader = asyncio.create_task(probe.consume(consumer, stop))
        prod = await producer(dep.bootstrap)
        try:
            started = time.time()
            valid, poison = await paced_with_poison(
                prod, dep, traffic, probe, rate=args.rate, seconds=args.warmup + args.seconds,
                poison_every=poison_every,
            )  # fmt: skip
            drain_until = time.monotonic() + 10.0
            while probe.sent_at and time.monotonic() < drain_until:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await reader
            await prod.stop()
            await consumer.stop()
        latencies = probe.window(started + args.warmup, float("inf"))
        return {"valid_sent": valid, "poison_sent": poison, "undecided": len(probe.sent_at),
                "p50_ms": 1000 * percentile(latencies, 50),
                "p99_ms": 1000 * percentile(latencies, 99)}  # fmt: skip
    finally:
        dep.stop_worker()
        dep.delete_keys()


async def run(args: argparse.Namespace) -> None:
    with services(args.broker) as svc:
        print(f"broker {args.broker}, {args.rate:,.0f} q/s, {args.seconds:g} s measured after "
              f"{args.warmup:g} s, 1 poison query per 100, {' '.join(args.worker_env)}; "
              f"{cpu_pressure()}")  # fmt: skip
        print("| rep | clean p50 ms | clean p99 ms | poisoned p50 ms | poisoned p99 ms | "
              "p99 ratio | poison sent | valid undecided |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for rep in range(args.reps):
            clean = await segment(svc, args, None)
            poisoned = await segment(svc, args, 100)
            ratio = poisoned["p99_ms"] / clean["p99_ms"]
            print(
                f"| {rep + 1} | {clean['p50_ms']:.1f} | {clean['p99_ms']:.1f} | "
                f"{poisoned['p50_ms']:.1f} | {poisoned['p99_ms']:.1f} | {ratio:.2f} "
                f"({'met' if ratio <= TARGET_RATIO else 'NOT met'}) | "
                f"{poisoned['poison_sent']} | {poisoned['undecided']} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="queries/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, per segment")
    parser.add_argument("--warmup", type=float, default=3.0, help="before measuring")
    parser.add_argument("--reps", type=int, default=2, help="clean + poisoned pairs")
    parser.add_argument("--broker", default="apache", help="apache (Java 17) or tansu")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="the worker's environment, e.g. RACER_UNKNOWN_SCOPE_GRACE_S=60 for a segment "
             "longer than the grace: every parked query then waits its whole grace inside it",
    )  # fmt: skip
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
