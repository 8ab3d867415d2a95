"""Redis memory per routed query, as the worker's own service writes it, beside the layout
it replaced (a hash per query holding the decision JSON), in one run.

Routes N queries through `RacerService` on a fresh local Redis (the worker's code path
without the broker: the bytes in Redis do not depend on how queries arrive), 500 a batch,
9 models, audit 0.1 at a certified threshold below 1, the 24 h feedback horizon; then
grades 30% of them as graders would: every model for the audited ones, the invoked models
for 22% of the others. The clock moves so the N decisions fill one one-hour slot, whose
buckets are what the worker gives a slot after one of N records (N x 1.25 / 100). Reports
``used_memory`` per routed query after routing and after grading, per audited record (a
run at audit 1), the window's bytes per record (``MEMORY USAGE`` of the stream over its
length) and a day of traffic at 100, 1,000 and 10,000 queries per second. The old layout
is rebuilt by writing, for the same decisions, what its route and feedback scripts wrote.

    .venv/bin/python -m benchmarks.redis_memory [--queries 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence

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
SLOT_S = 3600.0
START = 1_800_000_000.0  # a slot boundary


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        info: dict[str, int] = client.info("memory")  # type: ignore[assignment]
    return info["used_memory"]


class SimulatedClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = START, step

    def __call__(self) -> float:
        return self.now


def old_layout(url: str, routed: Sequence[Routed], models: Sequence[str], scores: bytes) -> None:
    """What the replaced route.lua wrote per query: a hash under its own key with the
    decision, float64 scores, lam, flags, invoked models and time; audits in a sorted set
    (its window entries and the 'in'/'u' flags are left out: under 2 B a query)."""
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        for r in routed:
            d = r.fields
            key = f"racer:{{{SCOPE}}}:pending:{d['query_id']}"
            invoked = ",".join(str(models.index(m)) for m in d["models"])
            pipe.hset(key, mapping={"d": r.raw, "s": scores, "lam": repr(d["lam"]),
                                    "a": int(d["audit"]), "m": invoked,
                                    "t": repr(d["decided_at"])})  # fmt: skip
            pipe.pexpire(key, DAY_S * 1000 * (2 if d["audit"] else 1))
            if d["audit"]:
                pipe.zadd(f"racer:{{{SCOPE}}}:audits", {key: d["decided_at"] + DAY_S})
        pipe.execute()


def old_labels(url: str, graded: Sequence[FeedbackMessage]) -> None:
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        for event in graded:
            key = f"racer:{{{SCOPE}}}:pending:{event.query_id}"
            pipe.hset(key, mapping={f"y:{m}": y for m, y in event.labels.items()})
        pipe.execute()


async def run(url: str, n: int, *, audit_rate: float, old: bool, seed: int = 0) -> dict:
    settings = Settings(redis_url=url, audit_rate=audit_rate, _env_file=None,
                        pending_min_buckets=max(1, n * 125 // 10_000))  # fmt: skip
    models = settings.scopes[SCOPE].model_names
    clock = SimulatedClock(SLOT_S / n)
    config = store_config(settings)
    service = RacerService(settings, RedisStore.from_url(url, config, clock=clock), clock=clock)
    scope = service.scopes[SCOPE]
    scope.apply(scope.threshold.model_copy(update={"lam": 0.5, "status": "certified"}))
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
        routed = service.decide(queries) if old else await service.route(queries)
        clock.now += clock.step * len(queries)
        decided = [r for r in routed if isinstance(r, Routed)]
        if old:
            old_layout(url, decided, models, rng.random(len(models) + 1).tobytes())
        for result in decided:
            d = result.fields
            wanted = models if d["audit"] else (d["models"] if rng.random() < 0.22 else ())
            if wanted:
                y = {m: int(rng.random() < 0.6) for m in wanted}
                graded.append(FeedbackMessage(query_id=d["query_id"], scope=SCOPE, labels=y))
    routed_bytes = used_memory(url)
    for start in range(0, len(graded), BATCH):
        if old:
            old_labels(url, graded[start : start + BATCH])
        else:
            await service.record_feedback(graded[start : start + BATCH])
    after = used_memory(url)
    with redis.Redis.from_url(url) as client:
        records = client.xlen(window(SCOPE))
        stream_bytes = client.memory_usage(window(SCOPE), samples=0) or 0
        pending = client.scan_iter(f"racer:{{{SCOPE}}}:pending:*", count=1000)
        encodings = {client.object("encoding", key) for key in pending}
    await service.store.close()
    return {
        "routed_per_query": (routed_bytes - before) / n,
        "graded_per_query": (after - before) / n,
        "window_record": stream_bytes / max(records, 1),
        "records": records,
        "graded_share": len(graded) / n,
        "encodings": sorted(e.decode() for e in encodings if e),
        "seconds": time.perf_counter() - started,
    }


def measure(n: int, *, audit_rate: float = 0.1, old: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=tmp) as server:
        return asyncio.run(run(server.url, n, audit_rate=audit_rate, old=old))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--audited", type=int, default=200_000, help="queries of the audit-1 run")
    args = parser.parse_args()
    new, old = measure(args.queries), measure(args.queries, old=True)
    audited = measure(args.audited, audit_rate=1.0)
    print(f"{args.queries:,} routed queries, {new['graded_share']:.0%} graded, "
          f"{new['records']:,} window records; {new['seconds']:.0f} s new, "
          f"{old['seconds']:.0f} s old; pending hashes: {', '.join(new['encodings'])}")  # fmt: skip
    print("| figure | compact layout | old layout |")
    print("|---|---:|---:|")
    rows = [("Redis per routed query, after routing", "routed_per_query"),
            ("Redis per routed query, after grading 30%", "graded_per_query"),
            ("window record (MEMORY USAGE / XLEN)", "window_record")]  # fmt: skip
    for label, key in rows:
        was = f"{old[key]:,.0f} B" if old[key] else "not rebuilt"  # the old window is not
        print(f"| {label} | {new[key]:,.0f} B | {was} |")
    print(f"| per audited record, before grading (audit 1, {args.audited:,} queries) | "
          f"{audited['routed_per_query']:,.0f} B | |")  # fmt: skip
    for rate in (100, 1_000, 10_000):
        day = [got["graded_per_query"] * rate * DAY_S / 1e9 for got in (new, old)]
        print(f"| a day at {rate:,} q/s | {day[0]:,.1f} GB | {day[1]:,.1f} GB |")


if __name__ == "__main__":
    main()
