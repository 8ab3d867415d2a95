"""Redis memory per routed query, as the worker's own service writes it.

Routes N queries through `RacerService` on a fresh local Redis (the worker's code path
without the broker: the bytes in Redis do not depend on how queries arrive), 500 a batch,
9 models, audit 0.1, the 24 h feedback horizon; then grades 30% of them as graders would:
every model for the audited ones, the invoked models for the others. Reports
``used_memory`` per routed query after routing and after grading, the window's bytes per
record (``MEMORY USAGE`` of the stream over its length) and a day of traffic at 100,
1,000 and 10,000 queries per second.

    .venv/bin/python -m benchmarks.redis_memory [--queries 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import numpy as np
import redis

from racer_online.local.services import EmbeddedRedis
from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, Routed, store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore
from racer_online.store.keys import window

BATCH = 500
SCOPE = "default"
DAY_S = 86_400


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        info: dict[str, int] = client.info("memory")  # type: ignore[assignment]
    return info["used_memory"]


async def run(url: str, n: int, seed: int) -> dict[str, float]:
    settings = Settings(redis_url=url, audit_rate=0.1, _env_file=None)
    models = settings.scopes[SCOPE].model_names
    service = RacerService(settings, RedisStore.from_settings(settings, store_config(settings)))
    rng = np.random.default_rng(seed)
    before, started = used_memory(url), time.perf_counter()
    graded: list[FeedbackMessage] = []
    for start in range(0, n, BATCH):
        scores = rng.random((min(BATCH, n - start), len(models)))
        queries = [
            QueryMessage(query_id=f"q{start + i}", scope=SCOPE,
                         scores=dict(zip(models, row.tolist(), strict=True)))
            for i, row in enumerate(scores)
        ]  # fmt: skip
        for result in await service.route(queries):
            assert isinstance(result, Routed)
            d = result.fields
            wanted = models if d["audit"] else (d["models"] if rng.random() < 0.22 else ())
            if wanted:
                y = {m: int(rng.random() < 0.6) for m in wanted}
                graded.append(FeedbackMessage(query_id=d["query_id"], scope=SCOPE, labels=y))
    routed = used_memory(url)
    for start in range(0, len(graded), BATCH):
        await service.record_feedback(graded[start : start + BATCH])
    after = used_memory(url)
    with redis.Redis.from_url(url) as client:
        records = client.xlen(window(SCOPE))
        stream_bytes = client.memory_usage(window(SCOPE), samples=0) or 0
    await service.store.close()
    return {
        "routed_per_query": (routed - before) / n,
        "graded_per_query": (after - before) / n,
        "window_record": stream_bytes / max(records, 1),
        "records": records,
        "graded_share": len(graded) / n,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=tmp) as server:
        got = asyncio.run(run(server.url, args.queries, seed=0))
    per_query = got["graded_per_query"]
    print(f"{args.queries:,} routed queries, {got['graded_share']:.0%} graded, "
          f"{got['records']:,} window records, {got['seconds']:.0f} s")  # fmt: skip
    print("| figure | bytes |")
    print("|---|---:|")
    print(f"| Redis per routed query, after routing | {got['routed_per_query']:,.0f} |")
    print(f"| Redis per routed query, after grading 30% | {per_query:,.0f} |")
    print(f"| window record (MEMORY USAGE / XLEN) | {got['window_record']:,.0f} |")
    for rate in (100, 1_000, 10_000):
        print(f"| a day at {rate:,} q/s | {per_query * rate * DAY_S / 1e9:,.1f} GB |")


if __name__ == "__main__":
    main()
