"""The decision API (``POST /v1/route``) beside a bare aiohttp handler, in the same run.

    python -m benchmarks.http_route --broker apache --rates 1000,5000 --seconds 10 --markdown

A real worker on a local broker and Redis answers ``/v1/route`` (each decision stored in
Redis and acknowledged by the broker on the decisions topic); the baseline is an aiohttp
server that reads the same body, parses it and makes one Redis round trip (a SET), the
least any stored decision costs. The load runs in its own process over keep-alive
connections on loopback:

- open loop at each rate: request i is due at start + i / rate, and its latency counts
  from then (so a stalled server is charged for the requests it delayed: no coordinated
  omission); p50 and p99 over the run;
- closed loop: ``--connections`` requests always in flight, for the maximum throughput.

Every loop is bounded in count and time. Medians of ``--reps`` repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from benchmarks._harness import Deployment, services
from benchmarks._load import Traffic
from benchmarks._machine import machine_facts, median
from racer_online.local.services import free_port
from racer_online.testing import die_with_parent, stop_process, until


def query_bodies(scope: str, n: int, *, seed: int) -> list[bytes]:
    """``n`` queries with the 9 shipped models' scores and ids of their own."""
    _, payloads, _ = Traffic(scope, seed=seed).batch(n)
    queries = [json.loads(p) for p in payloads]
    return [json.dumps(q | {"query_id": f"s{seed}-{q['query_id']}"}).encode() for q in queries]


# -- the baseline server ---------------------------------------------------------------------


def bare_app(redis_url: str) -> web.Application:
    """POST /v1/route: parse the JSON body, one Redis SET, answer the body back."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)

    async def route(request: web.Request) -> web.Response:
        body = await request.read()
        query = json.loads(body)
        await client.set(f"bench:bare:{query['query_id']}", body, ex=300)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/route", route)
    return app


# -- the load, in its own process -------------------------------------------------------------


async def open_loop(url: str, bodies: Sequence[bytes], rate: float, connections: int) -> dict:
    """Each request at its due time; latency from the due time to the answer."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, due: float) -> None:
            nonlocal errors
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.post(url, data=body, headers=JSON) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - due)
            else:
                errors += 1

        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(b, start + i / rate) for i, b in enumerate(bodies)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"rate": rate, "sent": len(bodies), "errors": errors,
            "achieved": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip


async def closed_loop(url: str, bodies: Sequence[bytes], connections: int, seconds: float) -> dict:
    """``connections`` requests always in flight until the bodies or the time run out."""
    done, errors = 0, 0
    queue = iter(bodies)
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            nonlocal done, errors
            for body in queue:
                if time.perf_counter() > deadline:
                    return
                async with session.post(url, data=body, headers=JSON) as reply:
                    await reply.read()
                    done, errors = done + (reply.status == 200), errors + (reply.status != 200)

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return {"connections": connections, "completed": done, "errors": errors,
            "throughput": done / elapsed}  # fmt: skip


JSON = {"content-type": "application/json"}


def run_load(mode: str, url: str, bodies: list[bytes], **options: Any) -> dict:
    """The load in a child process (its CPU is not the orchestrator's), its JSON result."""
    spec = json.dumps({"mode": mode, "url": url, "bodies": [b.decode() for b in bodies],
                       **options})  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.http_route", "--load"], input=spec.encode(),
        capture_output=True, check=True, timeout=600, preexec_fn=die_with_parent,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def load_main() -> None:
    spec = json.loads(sys.stdin.read())
    bodies = [b.encode() for b in spec.pop("bodies")]
    mode, url = spec.pop("mode"), spec.pop("url")
    result = asyncio.run(open_loop(url, bodies, **spec) if mode == "open"
                         else closed_loop(url, bodies, **spec))  # fmt: skip
    print(json.dumps(result))


# -- the run ------------------------------------------------------------------------------------


def measure(url: str, scope: str, rates: list[float], args: argparse.Namespace, rep: int) -> dict:
    warm = query_bodies(scope, 2000, seed=1000 + rep)
    run_load("open", url, warm, rate=1000.0, connections=args.connections)
    figures: dict[str, Any] = {}
    for k, rate in enumerate(rates):
        bodies = query_bodies(scope, int(rate * args.seconds), seed=10 * rep + k)
        figures[f"open_{rate:g}"] = run_load("open", url, bodies, rate=rate,
                                             connections=args.connections)  # fmt: skip
    bodies = query_bodies(scope, 200_000, seed=10 * rep + 9)
    figures["closed"] = run_load("closed", url, bodies, connections=args.connections,
                                 seconds=args.seconds)  # fmt: skip
    return figures


async def _answering(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            return reply.status < 500
    except aiohttp.ClientError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_route")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--broker", default="apache", choices=["apache", "tansu"])
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.load:
        return load_main()
    if args.bare:
        return web.run_app(bare_app(args.bare), host="127.0.0.1", port=args.port, print=None)
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, list[dict]] = {"api": [], "bare": []}
    with services(args.broker) as svc:
        dep = Deployment(svc, label="http")
        asyncio.run(dep.create_topics())
        dep.start_worker()
        asyncio.run(dep.wait_answering())
        api = f"http://127.0.0.1:{dep.web_port}/v1/route"
        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.http_route", "--bare", svc.redis.url,
             "--port", str(port)], preexec_fn=die_with_parent, env=os.environ.copy(),
        )  # fmt: skip
        bare_url = f"http://127.0.0.1:{port}/v1/route"
        asyncio.run(until(lambda: _answering(bare_url.rsplit("/v1", 1)[0]), timeout=30,
                          what="the bare server"))  # fmt: skip
        facts = machine_facts(svc.redis.url)
        try:
            for rep in range(args.reps):  # alternate, so drift of the machine hits both
                results["api"].append(measure(api, dep.scope, rates, args, rep))
                results["bare"].append(measure(bare_url, dep.scope, rates, args, rep))
        finally:
            stop_process(bare, grace=5)
            dep.stop_worker()
            dep.delete_keys()
    report(results, rates, facts, args)


def report(results: dict, rates: list[float], facts: dict, args: argparse.Namespace) -> None:
    def med(server: str, key: str, field: str) -> float:
        return median([rep[key][field] for rep in results[server]])

    rows = []
    for rate in rates:
        key = f"open_{rate:g}"
        rows.append((f"{rate:g} req/s: p50 / p99 ms",
                     *(f"{med(s, key, 'p50_ms'):.2f} / {med(s, key, 'p99_ms'):.2f}"
                       for s in ("api", "bare"))))  # fmt: skip
    rows.append(("maximum throughput, req/s",
                 *(f"{med(s, 'closed', 'throughput'):,.0f}" for s in ("api", "bare"))))  # fmt: skip
    ratio = med("api", "closed", "throughput") / med("bare", "closed", "throughput")
    if args.markdown:
        print(f"machine: {facts}\nbroker: {args.broker}, {args.reps} reps, medians\n")
        print("| figure | /v1/route | bare handler (one Redis SET) |\n|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\nthroughput ratio: {ratio:.2f}x")
    print(json.dumps({"results": results, "ratio": ratio}), file=sys.stderr)


if __name__ == "__main__":
    main()
