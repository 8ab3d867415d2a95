"""Where a scope's state lives on a Redis Cluster, measured: one shard per scope.

Drives the store (`RedisStore`, the worker's own Lua scripts) with the worker's batch
shape (500 queries a batch, audit 0.1, 9 models; feedback for 30% of the queries: every
model for the audited ones, the invoked models for the others) against, in one run:
one Redis server; a 3-master cluster with one scope; the same cluster with three scopes
whose hash tags sit on three different shards, driven concurrently. Reported per case:
the Redis CPU (user + system, from INFO) per routed query on the busiest node and in all,
and the wall rate of this one client process (bound by its own CPU, not by Redis).

    .venv/bin/python -m benchmarks.redis_cluster [--queries 60000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import redis

from racer_online.local.redis_cluster import LocalRedisCluster
from racer_online.local.services import EmbeddedRedis
from racer_online.store import LabelWrite, PendingWrite, RedisStore, StoreConfig
from racer_online.store.connection import connect_sync
from racer_online.store.keys import window

MODELS = tuple(f"m{i}" for i in range(9))
BATCH = 500


def node_cpu(urls: Sequence[str]) -> list[float]:
    seconds = []
    for url in urls:
        with redis.Redis.from_url(url) as client:
            cpu: dict[str, float] = client.info("cpu")  # type: ignore[assignment]
        seconds.append(cpu["used_cpu_user"] + cpu["used_cpu_sys"])
    return seconds


async def drive(store: RedisStore, scope: str, n: int, rng: np.random.Generator) -> None:
    """Route ``n`` queries of one scope in batches, then their feedback, as a worker would."""
    run = rng.integers(1 << 62)
    for start in range(0, n, BATCH):
        ids = [f"{run}-{i}" for i in range(start, min(n, start + BATCH))]
        audit = rng.random(len(ids)) < 0.1
        scores = rng.integers(0, 65_536, len(MODELS) + 1).astype("<u2")
        writes = [
            PendingWrite(scope, q, scores.tobytes(), 0.4, bool(a), (0, 1), time.time())
            for q, a in zip(ids, audit, strict=True)
        ]
        await store.route(writes)
        graded = [i for i in range(len(ids)) if audit[i] or rng.random() < 0.22]
        labels = [
            LabelWrite(scope, ids[i], dict.fromkeys(MODELS if audit[i] else MODELS[:2], 1))
            for i in graded
        ]
        await store.feedback(labels)


async def run_case(url: str, nodes: Sequence[str], scopes: Sequence[str], n: int) -> dict:
    config = StoreConfig(dict.fromkeys(scopes, MODELS), pending_ttl_s=3600, window_size=10**6)
    store = RedisStore.from_url(url, config)
    rng = np.random.default_rng(0)
    before, started = node_cpu(nodes), time.perf_counter()
    await asyncio.gather(*(drive(store, s, n // len(scopes), rng) for s in scopes))
    wall = time.perf_counter() - started
    used = [b - a for a, b in zip(before, node_cpu(nodes), strict=True)]
    await store.close()
    return {"busiest_us": max(used) / n * 1e6, "total_us": sum(used) / n * 1e6, "rate": n / wall}


def spread_scopes(cluster_url: str, count: int) -> list[str]:
    """Scope names whose hash-tagged keys land on ``count`` different primaries."""
    client = connect_sync(cluster_url)
    try:
        found: dict[str, str] = {}
        for i in range(1000):
            node = client.get_node_from_key(window(f"bench-{i}")).name
            found.setdefault(node, f"bench-{i}")
            if len(found) == count:
                return list(found.values())
    finally:
        client.close()
    raise RuntimeError("could not spread the scopes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"single": [], "cluster, 1 scope": [], "cluster, 3 scopes": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=tmp) as one, \
            LocalRedisCluster(f"{tmp}/cluster") as cluster:  # fmt: skip
        nodes = [f"redis://127.0.0.1:{node.port}" for node in cluster.nodes]
        spread = spread_scopes(cluster.url, 3)
        for _ in range(args.repeats):
            cases = {
                "single": (one.url, [one.url], ["bench-one"]),
                "cluster, 1 scope": (cluster.url, nodes, spread[:1]),
                "cluster, 3 scopes": (cluster.url, nodes, spread),
            }
            for name, (url, watched, scopes) in cases.items():
                results[name].append(asyncio.run(run_case(url, watched, scopes, args.queries)))
    print("| case | Redis CPU µs per routed query, busiest node | all nodes | client rate q/s |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {median['busiest_us']:.1f} | {median['total_us']:.1f} | "
              f"{median['rate']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
