"""What WAIT would cost: a routed batch's store call alone, and followed by ``WAIT 1``.

Asynchronous replication acknowledges a write before the replica has it; ``WAIT 1 <ms>``
after a batch's writes (before its decisions are published and its offsets committed)
would hold the batch until one replica acknowledged them, so that a failover promoting
that replica loses none of them. This measures that price on a primary and one replica
(`racer_online.local.redis_sentinel`, no sentinels) on loopback: batches of the worker's
shape (500 queries of 9 models, audit 0.1, 100 per script call in one pipeline) through
`RedisStore.route`, alternately without and with a ``WAIT 1 1000`` after each.

    .venv/bin/python -m benchmarks.redis_wait [--batches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import numpy as np
import redis.asyncio as aioredis

from racer_online.local.redis_sentinel import LocalSentinel
from racer_online.store import PendingWrite, RedisStore, StoreConfig

MODELS = tuple(f"m{i}" for i in range(9))
SCOPE = "s"
BATCH = 500


def batch(rng: np.random.Generator, first: int) -> list[PendingWrite]:
    return [
        PendingWrite(SCOPE, f"q{first + i}", rng.integers(0, 65_536, 10).astype("<u2").tobytes(),
                     0.4, bool(rng.random() < 0.1), (0, 1))
        for i in range(BATCH)
    ]  # fmt: skip


def quantiles(ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(ms, n=100)
    return {"p50_ms": round(cuts[49], 2), "p99_ms": round(cuts[98], 2)}


async def run(url: str, batches: int) -> dict[str, dict[str, float]]:
    config = StoreConfig({SCOPE: MODELS}, pending_ttl_s=86_400, window_size=10_000)
    store = RedisStore.from_url(url, config)
    waiter = aioredis.Redis.from_url(url)
    rng = np.random.default_rng(0)
    plain: list[float] = []
    waited: list[float] = []
    short = 0  # WAITs that returned before the replica acknowledged (never, on loopback)
    try:
        for b in range(batches):
            writes = batch(rng, b * BATCH)
            started = time.perf_counter()
            await store.route(writes)
            if b % 2:
                short += int(await waiter.execute_command("WAIT", 1, 1000)) < 1
                waited.append((time.perf_counter() - started) * 1000)
            else:
                plain.append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
        await waiter.aclose()
    return {"route": quantiles(plain), "route + WAIT 1": quantiles(waited),
            "waits_short_of_the_replica": {"count": short}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, LocalSentinel(workdir, sentinels=0) as nodes:
        figures = asyncio.run(run(nodes.primary_url, args.batches))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
