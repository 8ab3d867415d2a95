"""CPU per routed query of the route handler, this tree against an earlier commit, in one run.

The handler's part of the worker, without Kafka: parse each query (`QueryMessage.parse`),
then `RacerService.route` on batches of 500 (decide, encode, store in one script call, count)
against a local Redis, at a certified threshold with 9 models and audit rate 0.1. Each round
runs both trees in turn, each in a fresh process on a flushed Redis; a tree's figure is its
median over the batches after the first 10, then the median over rounds. Worker CPU is the
process's own (user + system); Redis CPU is the server's, from ``INFO cpu``.

    .venv/bin/python -m benchmarks.route_cpu --against 881ffb2 [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from benchmarks._machine import machine_facts
from racer_online.local.services import EmbeddedRedis

HERE = Path(__file__).resolve().parent.parent

# Runs inside the tree under test: only what both trees have (Settings, RacerService, the
# Traffic of the stream benchmark).
CHILD = """
import asyncio, json, statistics, sys, time
import redis
from benchmarks._harness import Traffic
from racer_online.messages import QueryMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore

BATCH, BATCHES, SKIP = 500, 60, 10

async def main(url):
    settings = Settings.load()
    service = RacerService(settings, RedisStore.from_settings(settings, store_config(settings)))
    scope = service.scopes["default"]
    scope.apply(scope.threshold.model_copy(update=dict(
        lam=0.35, status="certified", certified=True, version=1)))
    traffic = Traffic("default", seed=0)
    batches = [traffic.batch(BATCH)[1] for _ in range(BATCHES)]
    server = redis.Redis.from_url(url)
    def redis_cpu():
        info = server.info("cpu")
        return info["used_cpu_user"] + info["used_cpu_sys"]
    worker, before = [], redis_cpu()
    for payloads in batches:
        started = time.process_time()
        await service.route([QueryMessage.parse(p) for p in payloads])
        worker.append((time.process_time() - started) / BATCH * 1e6)
    print(json.dumps({"worker_us": statistics.median(worker[SKIP:]),
                      "redis_us": (redis_cpu() - before) / (BATCH * BATCHES) * 1e6}))

asyncio.run(main(sys.argv[1]))
"""


def measure(tree: Path, url: str) -> dict[str, float]:
    with redis.Redis.from_url(url) as server:
        server.flushall()
    env = os.environ | {"PYTHONPATH": str(tree), "RACER_REDIS_URL": url}
    done = subprocess.run([sys.executable, "-c", CHILD, url], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a commit to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=tmp) as server:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(base),
                        args.against], check=True)  # fmt: skip
        try:
            for key, value in machine_facts(server.url).items():
                print(f"{key}: {value}")
            trees = {args.against: base, "this tree": HERE}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, tree in trees.items():
                    runs[name].append(measure(tree, server.url))
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)],
                           check=True)  # fmt: skip
    print(f"\n{args.rounds} rounds, medians; 500-query batches, 9 models, audit rate 0.1")
    print("| code | worker CPU µs per query | Redis CPU µs per query |")
    print("|---|---:|---:|")
    for name, figures in runs.items():
        worker = statistics.median(f["worker_us"] for f in figures)
        redis_us = statistics.median(f["redis_us"] for f in figures)
        print(f"| {name} | {worker:.1f} | {redis_us:.1f} |")


if __name__ == "__main__":
    main()
