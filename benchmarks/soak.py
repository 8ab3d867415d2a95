"""Soak: one worker under steady queries plus feedback for every query, for minutes.

Queries at ``--rate`` per second (default 1,000) and, ``--feedback-delay`` seconds after
each query (default 1 s), its labels for every catalogue model. Every ``--sample-s``
seconds (default 10) it records the worker's RSS (VmRSS of /proc/PID/status), Redis
``used_memory``, the broker's RSS, the publish-to-decision latency p50/p99 over the
interval and the worker's counters. Then it reports RSS at start, after warm-up and at the
end, the RSS growth per minute after warm-up (least-squares slope), p99 over time and
Redis memory. The embedded Tansu broker keeps every message in memory, so its RSS grows
with the load by design: it is reported, and it is not the worker's.

    python -m benchmarks.soak [--minutes 10] [--rate 1000] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._harness import Deployment, Traffic, services, wait_ready
from benchmarks._load import LatencyProbe, paced_send, producer, tail_consumer
from benchmarks._machine import (
    cpu_pressure,
    cpu_seconds,
    machine_facts,
    metric_sum,
    percentile,
    rss_mb,
    scrape_metrics,
)
from racer_online.store import keys

GROWTH_BOUND_MB_PER_MIN = 1.0  # worker RSS slope after warm-up, stated before the run
P99_TARGET_MS = 15.0


@dataclass
class Sample:
    t: float  # seconds since the load started
    worker_mb: float
    broker_mb: float
    redis_mb: float  # used_memory
    keys: int
    window: int
    decisions: int  # probe receipts in the interval
    p50_ms: float
    p99_ms: float
    worker_cpu: float  # share of one core over the interval
    broker_cpu: float
    pressure: str  # Linux CPU pressure (others' load on the machine shows here)
    feedback: float  # feedback events the worker counted, in the interval
    threshold_version: float


class Sampler:
    def __init__(self, dep: Deployment, probe: LatencyProbe) -> None:
        self.dep, self.probe = dep, probe
        self.client = dep.redis_client()
        self.samples: list[Sample] = []
        self.start = time.time()
        self.last_cpu = cpu_seconds(dep.worker_pid)
        self.last_broker_cpu = cpu_seconds(dep.svc.broker.pid)
        self.last_feedback = self.feedback_total()

    def feedback_total(self) -> float:
        return metric_sum(scrape_metrics(self.dep.web_port), "racer_feedback_total")

    def take(self) -> Sample:
        now = time.time()
        previous = self.samples[-1].t if self.samples else 0.0
        latencies = [lat * 1000 for _, lat in self.probe.latencies]
        self.probe.latencies.clear()
        cpu = cpu_seconds(self.dep.worker_pid)
        broker_cpu = cpu_seconds(self.dep.svc.broker.pid)
        interval = max(now - self.start - previous, 1e-9)
        metrics = scrape_metrics(self.dep.web_port)
        feedback = metric_sum(metrics, "racer_feedback_total")
        info: Any = self.client.info("memory")
        sample = Sample(
            t=now - self.start,
            worker_mb=rss_mb(self.dep.worker_pid),
            broker_mb=rss_mb(self.dep.svc.broker.pid),
            redis_mb=info["used_memory"] / 2**20,
            keys=int(self.client.dbsize()),
            window=int(self.client.xlen(keys.window(self.dep.scope))),
            decisions=len(latencies),
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            worker_cpu=(cpu - self.last_cpu) / interval,
            broker_cpu=(broker_cpu - self.last_broker_cpu) / interval,
            pressure=cpu_pressure().split()[0].removeprefix("avg10="),
            feedback=feedback - self.last_feedback,
            threshold_version=metric_sum(metrics, "racer_threshold_version"),
        )
        self.last_cpu, self.last_feedback = cpu, feedback
        self.last_broker_cpu = broker_cpu
        self.samples.append(sample)
        return sample

    async def run(self, every: float, stop: asyncio.Event, console: Console) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            s = self.take()
            console.print(
                f"  t={s.t:6.0f}s worker {s.worker_mb:6.1f} MB  broker {s.broker_mb:7.1f} MB  "
                f"redis {s.redis_mb:7.1f} MB  p50 {s.p50_ms:6.1f} ms  p99 {s.p99_ms:7.1f} ms  "
                f"decisions {s.decisions}  feedback {s.feedback:.0f}  window {s.window}  "
                f"cpu {s.worker_cpu:.2f}  broker cpu {s.broker_cpu:.2f}  "
                f"threshold v{s.threshold_version:.0f}  CPU pressure {s.pressure}"
            )


def slope_per_minute(samples: list[Sample], field: str, since: float) -> float:
    points = [(s.t, getattr(s, field)) for s in samples if s.t >= since]
    if len(points) < 2:
        return float("nan")
    t, y = np.array(points).T
    return float(np.polyfit(t / 60.0, y, 1)[0])


async def soak(args: argparse.Namespace, console: Console) -> None:
    with services() as svc:
        facts = machine_facts(svc.redis.url)
        facts["redis"] = f"{svc.redis.kind} ({svc.redis.url})"
        for key, value in facts.items():
            console.print(f"[bold]{key}[/]: {value}")
        dep = Deployment(svc, label="soak", env=dict(kv.split("=", 1) for kv in args.worker_env))
        dep.pythonpath = args.worker_pythonpath
        await dep.create_topics()
        traffic = Traffic(dep.scope, seed=3)
        dep.start_worker()
        try:
            ready = await wait_ready(dep, traffic)
            console.print(f"worker ready in {ready:.1f} s (pid {dep.worker_pid})")
            probe, stop = LatencyProbe(), asyncio.Event()
            consumer = await tail_consumer(
                dep.bootstrap, dep.topics["decisions"], from_start=False,
                fetch_max_wait_ms=args.probe_fetch_wait_ms,
            )  # fmt: skip
            reader = asyncio.create_task(probe.consume(consumer, stop))
            sampler = Sampler(dep, probe)
            start_sample = sampler.take()  # t = 0: the worker before any load
            sampling = asyncio.create_task(sampler.run(args.sample_s, stop, console))
            prod = await producer(dep.bootstrap)
            try:
                sent = await paced_send(
                    prod, dep.topics, traffic, probe, rate=args.rate,
                    seconds=args.minutes * 60, feedback_delay=args.feedback_delay,
                )  # fmt: skip
                drain_until = time.monotonic() + 10.0
                while probe.sent_at and time.monotonic() < drain_until:
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.gather(reader, sampling)
                await prod.stop()
                await consumer.stop()
            report(args, console, facts, sampler.samples, start_sample, sent, len(probe.sent_at))
        finally:
            dep.stop_worker()
            dep.delete_keys()


def report(
    args: argparse.Namespace, console: Console, facts: dict[str, str], samples: list[Sample],
    start: Sample, sent: int, unanswered: int,
) -> None:  # fmt: skip
    warmup = args.warmup_minutes * 60
    load = [s for s in samples if 0 < s.t <= args.minutes * 60 + args.sample_s]
    after = min((s for s in load if s.t >= warmup), key=lambda s: s.t, default=load[-1])
    end = load[-1]
    growth = slope_per_minute(load, "worker_mb", warmup)
    half = args.minutes * 60 / 2
    late_growth = slope_per_minute(load, "worker_mb", max(warmup, half))
    p99s = [s.p99_ms for s in load if s.decisions]
    steady = [s for s in load if s.t >= warmup and s.decisions]
    redis_per_query = (end.redis_mb - start.redis_mb) * 2**20 / max(sent, 1)
    summary = [
        ("queries sent / unanswered", f"{sent:,} / {unanswered:,}", ""),
        ("worker RSS at start, MB", f"{start.worker_mb:.1f}", ""),
        (f"worker RSS after warm-up ({after.t:.0f} s), MB", f"{after.worker_mb:.1f}", ""),
        ("worker RSS at end, MB", f"{end.worker_mb:.1f}", ""),
        ("worker RSS growth after warm-up, MB/min", f"{growth:+.2f}",
         f"<= {GROWTH_BOUND_MB_PER_MIN}: {'yes' if growth <= GROWTH_BOUND_MB_PER_MIN else 'no'}"),
        (f"worker RSS growth over the second half (from {half:.0f} s), MB/min",
         f"{late_growth:+.2f}", ""),
        ("worker CPU, cores (median of intervals)",
         f"{np.median([s.worker_cpu for s in load]):.2f}", ""),
        ("p50 over the run, ms (median of intervals)",
         f"{np.median([s.p50_ms for s in load if s.decisions]):.1f}", ""),
        ("p99 after warm-up, ms (median / max of intervals)",
         f"{np.median([s.p99_ms for s in steady]):.1f} / {max(s.p99_ms for s in steady):.1f}"
         if steady else "-",
         f"<= {P99_TARGET_MS:.0f}: "
         + ("yes" if steady and max(s.p99_ms for s in steady) <= P99_TARGET_MS else "no")),
        ("p99 range over all intervals, ms", f"{min(p99s):.1f} - {max(p99s):.1f}" if p99s else "-",
         ""),
        ("Redis used_memory start / end, MB", f"{start.redis_mb:.1f} / {end.redis_mb:.1f}", ""),
        ("Redis bytes per query (pending record + window)", f"{redis_per_query:,.0f}", ""),
        ("Redis keys at end / window records", f"{end.keys:,} / {end.window:,}", ""),
        ("broker RSS start / end, MB (memory-only Tansu)",
         f"{start.broker_mb:.1f} / {end.broker_mb:.1f}", ""),
        ("threshold version at end", f"v{end.threshold_version:.0f}", ""),
    ]  # fmt: skip
    title = (
        f"Soak: one worker, {args.rate:,.0f} q/s + full feedback {args.feedback_delay:g} s "
        f"later, {args.minutes:g} min, warm-up {args.warmup_minutes:g} min, "
        f"samples every {args.sample_s:g} s"
    )
    if args.worker_env or args.worker_pythonpath:
        title += f"; worker: {' '.join(args.worker_env)} {args.worker_pythonpath or ''}".rstrip()
    table = Table("figure", "value", "bound / target", title=title)
    for row in summary:
        table.add_row(*row)
    console.print(table)
    every = max(1, round(60 / args.sample_s))  # one line a minute in the over-time table
    over_time = [s for i, s in enumerate(load) if i % every == every - 1 or s is end]
    headers = ("t, s", "worker RSS, MB", "Redis used, MB", "broker RSS, MB", "p50, ms",
               "p99, ms", "decisions", "feedback", "window", "worker CPU", "broker CPU",
               "CPU pressure")  # fmt: skip
    rows = [
        (f"{s.t:.0f}", f"{s.worker_mb:.1f}", f"{s.redis_mb:.1f}", f"{s.broker_mb:.1f}",
         f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}", f"{s.decisions:,}", f"{s.feedback:,.0f}",
         f"{s.window:,}", f"{s.worker_cpu:.2f}", f"{s.broker_cpu:.2f}", s.pressure)
        for s in over_time
    ]  # fmt: skip
    detail = Table(*headers, title=f"Over time (the {args.sample_s:g} s interval ending at t)")
    for row in rows:
        detail.add_row(*row)
    console.print(detail)
    if args.markdown:
        print("\n" + "\n".join(f"- {key}: {value}" for key, value in facts.items()))
        print(f"\n{title}\n\n| figure | value | bound / target |\n|---|---:|---|")
        for row in summary:
            print("| " + " | ".join(row) + " |")
        print(f"\nOver time (the {args.sample_s:g} s interval ending at t)\n")
        print("| " + " | ".join(headers) + " |\n|" + "---:|" * len(headers))
        for row in rows:
            print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="queries per second")
    parser.add_argument("--feedback-delay", type=float, default=1.0, help="seconds")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="default: 2, or a fifth of --minutes if shorter")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument(
        "--probe-fetch-wait-ms", type=int, default=100,
        help="the latency probe's fetch wait: Tansu's fetch cost grows with the partition, "
        "so a 1 ms poll on a topic of 100k+ records saturates it (see docs/benchmarks.md)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the worker, e.g. RACER_BATCH_TIMEOUT_S=0.005",
    )
    parser.add_argument("--worker-pythonpath", help="PYTHONPATH of the worker (a patched copy)")
    args = parser.parse_args()
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    console = Console(width=None if sys.stdout.isatty() else 160)
    asyncio.run(soak(args, console))


if __name__ == "__main__":
    main()
