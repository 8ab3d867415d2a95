"""Redis CPU per record of the pending layout's scripts: routing, feedback that finds its
record in the newest slot, and feedback for ids never routed (the search over every slot
of the horizon, then a held entry).

Routes N queries of 9 models with `RedisStore` on a fresh local Redis, 100 a script call,
over 25 one-hour slots of a simulated clock (so feedback searches a full 24 h horizon),
then sends feedback for the ids of the newest slot, of the oldest slot within the horizon
and for as many ids never routed. Each figure is Redis's own
``INFO commandstats`` time of EVALSHA over the records of that phase.

    .venv/bin/python -m benchmarks.pending_lookups [--queries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

import numpy as np
import redis

from racer_online.local.services import EmbeddedRedis
from racer_online.store import LabelWrite, PendingWrite, RedisStore, StoreConfig

MODELS = tuple(f"m{i}" for i in range(9))
SCOPE = "s"
START = 1_800_000_000.0  # a slot boundary
CALL = 100


def evalsha_usec(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats: dict = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def run(url: str, n: int) -> dict[str, float]:
    now = [START]
    config = StoreConfig({SCOPE: MODELS}, pending_ttl_s=86_400, window_size=10_000,
                         min_buckets=max(1, n * 125 // 10_000 // 25))  # fmt: skip
    store = RedisStore.from_url(url, config, clock=lambda: now[0])
    rng = np.random.default_rng(0)
    step = 25 * 3600 / n  # N decisions over 25 slots
    figures: dict[str, float] = {}
    before = evalsha_usec(url)
    for start in range(0, n, CALL):
        writes = [
            PendingWrite(SCOPE, f"q{i}", rng.integers(0, 65_536, 10).astype("<u2").tobytes(),
                         0.4, bool(rng.random() < 0.1), (0, 1), now[0] + j * step)
            for j, i in enumerate(range(start, min(n, start + CALL)))
        ]  # fmt: skip
        await store.route(writes)
        now[0] += step * len(writes)
    figures["route"] = (evalsha_usec(url) - before) / n
    per_slot = n // 25
    phases = {
        "feedback, record in the newest slot": [f"q{i}" for i in range(n - per_slot, n)],
        "feedback, record 23-24 h old": [f"q{i}" for i in range(per_slot, 2 * per_slot)],
        "feedback, id never routed (then held)": [f"x{i}" for i in range(per_slot)],
    }
    for name, ids in phases.items():
        before = evalsha_usec(url)
        for start in range(0, len(ids), CALL):
            labels = [LabelWrite(SCOPE, q, {"m0": 1, "m1": 0}) for q in ids[start : start + CALL]]
            await store.feedback(labels)
        figures[name] = (evalsha_usec(url) - before) / len(ids)
    await store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=tmp) as server:
        got = asyncio.run(run(server.url, args.queries))
    print(f"{args.queries:,} routed over 25 one-hour slots, {args.queries // 25:,} per feedback "
          f"phase, {CALL} records per script call")  # fmt: skip
    print("| phase | Redis CPU per record |")
    print("|---|---:|")
    for name, usec in got.items():
        print(f"| {name} | {usec:,.1f} us |")


if __name__ == "__main__":
    main()
