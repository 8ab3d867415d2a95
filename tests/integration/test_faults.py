"""Faults: SIGKILLed workers, Redis stopped or hung, a hung broker. Nothing lost or doubled.

Each test runs real worker processes on a broker and an append-only Redis of its own
(`fault_deployment`), streams queries and their feedback interleaved (every query graded,
some of it in two parts, some feedback ahead of its query), injects the fault, and then
compares the scope's Redis window with what was sent, record by record: every query has
unique scores, so each window entry maps back to exactly one query, whose labels it must
carry. The audit rate is 1.0, so every fully graded record must enter the window once.

The figures go to the assertion messages, to stdout (``-s``) and to
``artifacts/reliability/<test>.json`` (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from racer_online.service.window import quantise, unpack_scores
from racer_online.store import keys
from racer_online.store.codec import window_entry
from racer_online.store.records import query_hash
from racer_online.testing import metric_total, scrape, until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MODELS = ("m0", "m1", "m2")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "reliability"


# -- traffic ---------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Queries with unique scores and their labels (a Bernoulli of each score)."""

    scope: str
    scores: np.ndarray  # (n, K)
    labels: np.ndarray  # (n, K) of 0/1
    split: np.ndarray  # (n,) bool: feedback in two events (first model, then the rest)
    lag: np.ndarray  # (n,) feedback position relative to its query (may be negative)
    index: dict[tuple[float, ...], int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {tuple(row): i for i, row in enumerate(self.scores.tolist())}
        assert len(self.index) == len(self.scores), "scores must identify their query"

    def query_id(self, i: int) -> str:
        return f"q{i:06d}"

    def query(self, i: int) -> dict[str, Any]:
        scores = dict(zip(MODELS, self.scores[i].tolist(), strict=True))
        return {"query_id": self.query_id(i), "scope": self.scope, "scores": scores}

    def feedback(self, i: int) -> list[dict[str, Any]]:
        labels = dict(zip(MODELS, self.labels[i].tolist(), strict=True))
        parts = [dict(list(labels.items())[:1]), dict(list(labels.items())[1:])]
        chosen = parts if self.split[i] else [labels]
        return [{"query_id": self.query_id(i), "scope": self.scope, "labels": p} for p in chosen]

    def label_string(self, i: int) -> str:
        return "".join(str(int(y)) for y in self.labels[i])

    def events(self, rows: range) -> list[tuple[str, dict[str, Any]]]:
        """Queries in order, each one's feedback `lag` positions away, as a client sees it."""
        placed = [(float(i), 0, "queries", self.query(i)) for i in rows]
        for i in rows:
            for part, event in enumerate(self.feedback(i)):
                placed.append((i + float(self.lag[i]) + 0.1 * part, 1 + part, "feedback", event))
        placed.sort(key=lambda p: (p[0], p[1]))
        return [(topic, value) for _, _, topic, value in placed]


def make_traffic(scope: str, n: int, *, seed: int) -> Traffic:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.02, 0.98, size=(n, len(MODELS)))
    labels = (rng.random((n, len(MODELS))) < scores).astype(int)
    return Traffic(
        scope, scores, labels, split=rng.random(n) < 0.3, lag=rng.integers(-5, 60, size=n)
    )


# -- the test's clients ----------------------------------------------------------------------


class Publisher:
    """One producer for the whole test; `publish` keeps an optional pace (events/s)."""

    def __init__(self, deployment: Any) -> None:
        self.deployment = deployment
        # acks=all: a record acknowledged by a leader that dies next is not lost with it
        self.producer = AIOKafkaProducer(
            bootstrap_servers=deployment.bootstrap, linger_ms=5, acks="all"
        )
        self.sent_at: dict[str, float] = {}  # query id -> when its query was sent

    async def __aenter__(self) -> Publisher:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def publish(self, events: list[tuple[str, dict[str, Any]]], *, rate: float = 0) -> None:
        started, chunk = time.monotonic(), 50
        for first in range(0, len(events), chunk):
            futures = [
                await self.producer.send(
                    self.deployment.topics[topic],
                    json.dumps(value).encode(),
                    key=value["query_id"].encode(),
                )
                for topic, value in events[first : first + chunk]
            ]
            await asyncio.gather(*futures)
            now = time.monotonic()
            for topic, value in events[first : first + chunk]:
                if topic == "queries":
                    self.sent_at.setdefault(value["query_id"], now)
            if rate:  # a client's pace, not a wait for an event
                ahead = started + (first + chunk) / rate - time.monotonic()
                await asyncio.sleep(max(0.0, ahead))


class Tail:
    """Reads a topic from the start for the whole test, stamping each arrival."""

    def __init__(self, deployment: Any, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            deployment.topics[topic], bootstrap_servers=deployment.bootstrap,
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        )  # fmt: skip
        self.got: list[tuple[float, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            self.got += [(now, m.value) for msgs in batch.values() for m in msgs]

    def latencies(self, sent_at: dict[str, float], ids: set[str]) -> dict[str, float | None]:
        """Seconds from a query's send to its first decision: median and max over ``ids``."""
        first: dict[str, float] = {}
        for at, raw in self.got:
            first.setdefault(json.loads(raw)["query_id"], at)
        waits = sorted(first[q] - sent_at[q] for q in ids if q in first and q in sent_at)
        if not waits:
            return {"p50_s": None, "max_s": None}
        return {"p50_s": round(waits[len(waits) // 2], 2), "max_s": round(waits[-1], 2)}

    def by_query(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for _, raw in self.got:
            out.setdefault(json.loads(raw)["query_id"], []).append(raw)
        return out


@dataclass
class WindowCheck:
    """The window against the traffic: which queries are in it, how often, with which labels."""

    entries: int
    lost: list[int]
    doubled: int
    wrong_labels: int
    unknown: int

    @property
    def exact(self) -> bool:
        return not (self.lost or self.doubled or self.wrong_labels or self.unknown)


class Window:
    def __init__(self, redis_url: str, traffic: Traffic) -> None:
        self.client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        self.traffic = traffic

    async def _call(self, name: str, *args: Any) -> Any:
        for attempt in range(3):  # a connection from before a Redis restart fails once
            try:
                return await getattr(self.client, name)(keys.window(self.traffic.scope), *args)
            except redis.exceptions.ConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def length(self) -> int:
        return int(await self._call("xlen"))

    async def check(self, expected: range) -> WindowCheck:
        rows = await self._call("xrange", "-", "+")
        seen: Counter[int] = Counter()
        wrong = unknown = 0
        by_query = {query_hash(self.traffic.query_id(i)).hex(): i
                    for i in range(len(self.traffic.scores))}  # fmt: skip
        for entry_id, fields in rows:
            entry = window_entry(entry_id.decode(), fields[b"r"], fields[b"q"], len(MODELS))
            i = by_query.get(entry.query)
            if i is None:
                unknown += 1
                continue
            seen[i] += 1
            # The labels graded, and the scores the decision used: the query's, quantised.
            decided = quantise(self.traffic.scores[i])
            held = unpack_scores(entry.scores)[: len(MODELS)]
            wrong += entry.labels != self.traffic.label_string(i) or bool((held != decided).any())
        lost = [i for i in expected if i not in seen]
        doubled = sum(c - 1 for c in seen.values())
        return WindowCheck(len(rows), lost, doubled, wrong, unknown)

    async def close(self) -> None:
        await self.client.aclose()


async def settled(window: Window, expected: int, *, timeout: float, quiet: float = 2.0) -> float:
    """Wait until the window holds ``expected`` records and stays put for ``quiet`` seconds
    (a redelivered tail that doubled a record would show in that time)."""
    started = time.monotonic()
    await until(
        lambda: _at_least(window, expected), timeout=timeout, what=f"{expected} window records"
    )
    took = time.monotonic() - started
    length, since = await window.length(), time.monotonic()
    while time.monotonic() - since < quiet:
        await asyncio.sleep(0.2)
        now = await window.length()
        if now != length:
            length, since = now, time.monotonic()
    return took


async def _at_least(window: Window, n: int) -> bool:
    return await window.length() >= n


def record(name: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")


def crash_lines(log: str) -> list[str]:
    """Lines of a worker log that show a crash (an agent or the worker died of an error)."""
    marks = ("Traceback", "crashed", "Crashed", "CRITICAL", "Fatal")
    return [line for line in log.splitlines() if any(m in line for m in marks)]


def decisions_consistent(tail: Tail) -> tuple[int, int]:
    """(redelivered decisions, of which differing from the first one for their query)."""
    redelivered = differing = 0
    for raws in tail.by_query().values():
        redelivered += len(raws) - 1
        differing += sum(raw != raws[0] for raw in raws[1:])
    return redelivered, differing


# -- the faults ------------------------------------------------------------------------------


@pytest.fixture
def deployed(fault_deployment):
    fault_deployment.write_scopes(MODELS)
    return fault_deployment


async def publish_gated(
    publisher: Publisher, events: list[Any], cuts: list[int], gates: list[asyncio.Event]
) -> None:
    """The stream in parts, each released by the kill before it: every worker gets fresh
    work of its own before it is killed, however long it takes to start on a busy machine."""
    bounds = [0, *cuts, len(events)]
    for part, (first, last) in enumerate(itertools.pairwise(bounds)):
        if part:
            await gates[part - 1].wait()
        await publisher.publish(events[first:last], rate=230)  # a client's pace: ~30 s


async def test_five_sigkills_mid_stream_lose_and_double_nothing(deployed, fault_services):
    n = 3000
    traffic = make_traffic(deployed.scope, n, seed=11)
    events = traffic.events(range(n))
    window = Window(fault_services.redis.url, traffic)
    rng = np.random.default_rng(5)
    worker, kills, started = deployed.start_worker(), [], time.monotonic()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            # The last 30% of the stream waits for the fifth kill: every kill is mid-stream.
            cuts = [int(len(events) * f) for f in (0.1, 0.25, 0.4, 0.55, 0.7)]
            gates = [asyncio.Event() for _ in cuts]
            sending = asyncio.create_task(publish_gated(publisher, events, cuts, gates))
            for gate in gates:
                # Kill once this worker has made progress of its own, at a random instant.
                floor = kills[-1]["window"] + 50 if kills else 50
                what = f"{floor} window records before kill {len(kills) + 1}"
                await until(lambda f=floor: _at_least(window, f), timeout=90, what=what)
                await asyncio.sleep(float(rng.uniform(0, 0.5)))
                kills.append({"at_s": round(time.monotonic() - started, 1),
                              "window": await window.length(),
                              "decisions": len(decisions.got),
                              "mid_stream": not sending.done()})  # fmt: skip
                deployed.kill(worker)  # SIGKILL: no commit, no leaving the group
                worker = deployed.start_worker()
                gate.set()
            await sending
            took = await settled(window, n, timeout=90)
            await until(lambda: len(decisions.by_query()) >= n, timeout=30, what="decisions")
            check = await window.check(range(n))
            redelivered, differing = decisions_consistent(decisions)
    finally:
        await window.close()
    figures = {
        "queries": n, "feedback_events": len(events) - n, "sigkills": len(kills),
        "sigkills_while_publishing": sum(k["mid_stream"] for k in kills),
        "window_records": check.entries, "lost": len(check.lost), "doubled": check.doubled,
        "wrong_labels": check.wrong_labels, "unknown_entries": check.unknown,
        "decided_queries": len(decisions.by_query()), "redelivered_decisions": redelivered,
        "redelivered_decisions_differing": differing, "kills": kills,
        "seconds_to_full_window_after_stream": round(took, 1),
        "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("sigkill", figures)
    summary = (
        f"{len(check.lost)} lost, {check.doubled} doubled, {check.wrong_labels} wrong labels, "
        f"{check.unknown} unknown of {n} records after {len(kills)} SIGKILLs; "
        f"{redelivered} decisions redelivered, {differing} of them differing"
    )
    assert len(kills) == 5 and all(k["mid_stream"] for k in kills), summary
    exact = check.exact and check.entries == n
    assert exact, summary
    assert len(decisions.by_query()) == n and differing == 0, summary
    assert worker.poll() is None, summary


async def grown_or_stalled(window: Window, target: int, *, timeout: float, stall: float) -> float:
    """Wait until the window holds ``target`` records, or has not grown for ``stall`` seconds
    (then the check reports what is missing rather than a bare time-out)."""
    started = time.monotonic()
    length, since = await window.length(), started
    while length < target and time.monotonic() - since < stall:
        assert time.monotonic() - started < timeout, f"window still growing after {timeout} s"
        await asyncio.sleep(0.2)
        now = await window.length()
        if now != length:
            length, since = now, time.monotonic()
    return time.monotonic() - started


def retried(deployed: Any, topic: str, worker: int = 0) -> int:
    """Batches of ``topic`` the worker retried (``racer_batch_retries_total``): it waits for
    Redis. The log says so once per outage, the counter counts each retry."""
    text = scrape(deployed.web_ports[worker])
    return int(metric_total(text, "racer_batch_retries_total", topic=deployed.topics[topic]))


async def test_redis_restart_mid_stream_holds_the_stream_and_loses_nothing(
    deployed, fault_services
):
    """While Redis is down no decision is published (none could be stored, so a redelivery
    could decide again differently); the batches wait, paused, and go through once Redis
    is back, each query decided once."""
    n1, n2, n3 = 600, 600, 600
    n = n1 + n2 + n3
    traffic = make_traffic(deployed.scope, n, seed=12)
    window = Window(fault_services.redis.url, traffic)
    worker, started = deployed.start_worker(), time.monotonic()
    try:
        async with (
            Publisher(deployed) as publisher,
            Tail(deployed, "decisions") as decisions,
            Tail(deployed, "thresholds") as thresholds,
        ):
            await publisher.publish(traffic.events(range(n1)))
            await until(lambda: _at_least(window, n1), timeout=60, what="the first records")
            await until(lambda: any(json.loads(r)["n"] == n1 for _, r in thresholds.got),
                        timeout=30, what=f"a threshold on {n1} records")  # fmt: skip
            # The leader applied it at once; with no new records it stays the current one.
            before = json.loads(thresholds.got[-1][1])

            fault_services.redis.stop(keep_data=True)  # SIGTERM: the AOF is flushed
            down_at = time.monotonic()
            outage = {traffic.query_id(i) for i in range(n1, n1 + n2)}
            # Clients go on at their pace (~5 s of traffic) while Redis is down.
            await publisher.publish(traffic.events(range(n1, n1 + n2)), rate=300)
            await until(lambda: retried(deployed, "queries") and retried(deployed, "feedback"),
                        timeout=60, what="both topics' batches waiting for Redis")  # fmt: skip
            fault_services.redis.start()
            up_at = time.monotonic()
            during = [json.loads(raw) for at, raw in decisions.got if down_at <= at < up_at]
            await until(lambda: outage <= decisions.by_query().keys(), timeout=90,
                        what="the outage's queries decided")  # fmt: skip
            decided_s = time.monotonic() - up_at
            after = [json.loads(decisions.by_query()[q][0]) for q in outage]

            await publisher.publish(traffic.events(range(n1 + n2, n)))
            await grown_or_stalled(window, n, timeout=90, stall=12)
            settled_at = time.monotonic()
            check = await window.check(range(n))
            redelivered, differing = decisions_consistent(decisions)
    finally:
        await window.close()
    log = deployed.log(0)
    figures = {
        "queries": n, "queries_during_outage": n2,
        "outage_s": round(up_at - down_at, 1),
        "decisions_during_outage": len(during),
        "seconds_from_redis_up_to_outage_queries_decided": round(decided_s, 1),
        "outage_decision_versions": sorted({d["threshold_version"] for d in after}),
        "threshold_before_outage": {k: before[k] for k in ("version", "lam", "status", "n")},
        "route_retries": retried(deployed, "queries"),
        "feedback_retries": retried(deployed, "feedback"),
        # Up to the full window, or to 12 s without growth when records are missing.
        "seconds_from_redis_up_to_settled_window": round(settled_at - up_at, 1),
        "window_records": check.entries, "expected_records": n,
        "lost": len(check.lost), "doubled": check.doubled, "wrong_labels": check.wrong_labels,
        "redelivered_decisions": redelivered, "redelivered_decisions_differing": differing,
        "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("redis_restart", figures)
    summary = (
        f"{len(check.lost)} lost, {check.doubled} doubled, {check.wrong_labels} wrong labels "
        f"of {n}; {len(during)} decisions during the {up_at - down_at:.1f} s outage; "
        f"{differing} redelivered decisions differing"
    )
    assert during == [], summary
    assert differing == 0, summary
    exact = check.exact and check.entries == n
    assert exact, summary
    assert worker.poll() is None and not crash_lines(log), summary
    # Logged once as the outage starts and once as it ends, not once per attempt.
    for what in ("keeping the thresholds in memory", f"BatchConsumer({deployed.topics['queries']})"
                 ": batches retried, partitions paused"):  # fmt: skip
        assert log.count(f"{what}: redis") == 1 and log.count(f"{what}: over after") == 1, what


async def test_broker_paused_worker_reconnects_and_catches_up(deployed, fault_services):
    n, first, pause_s = 1500, 400, 4.0
    traffic = make_traffic(deployed.scope, n, seed=13)
    window = Window(fault_services.redis.url, traffic)
    worker, started = deployed.start_worker(), time.monotonic()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            await publisher.publish(traffic.events(range(first)))
            await until(lambda: _at_least(window, first), timeout=60, what="the first records")
            sending = asyncio.create_task(
                publisher.publish(traffic.events(range(first, n)), rate=250)
            )
            await until(lambda: _at_least(window, first + 100), timeout=30, what="progress")
            fault_services.broker.pause()  # SIGSTOP: sockets open, nothing answers
            paused_at = time.monotonic()
            await asyncio.sleep(pause_s)  # the fault's length, nothing to wait for
            fault_services.broker.resume()
            resumed_at = time.monotonic()
            in_pause = await window.length()
            await sending
            took = await settled(window, n, timeout=90)
            await until(lambda: len(decisions.by_query()) >= n, timeout=30, what="decisions")
            check = await window.check(range(n))
            redelivered, differing = decisions_consistent(decisions)
    finally:
        await window.close()
    log = deployed.log(0)
    crashes = crash_lines(log)
    figures = {
        "queries": n, "paused_s": round(resumed_at - paused_at, 1),
        "window_when_resumed": in_pause,
        "seconds_to_full_window_after_resume": round(time.monotonic() - resumed_at, 1),
        "window_records": check.entries, "lost": len(check.lost), "doubled": check.doubled,
        "wrong_labels": check.wrong_labels, "decided_queries": len(decisions.by_query()),
        "redelivered_decisions": redelivered, "redelivered_decisions_differing": differing,
        "worker_alive": worker.poll() is None, "crash_lines": crashes[:5],
        "settle_s": round(took, 1), "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("broker_pause", figures)
    summary = (
        f"{len(check.lost)} lost, {check.doubled} doubled of {n} after a "
        f"{resumed_at - paused_at:.1f} s broker pause; worker alive: {worker.poll() is None}; "
        f"crash lines: {crashes[:3]}"
    )
    assert worker.poll() is None and not crashes, summary
    exact = check.exact and check.entries == n
    assert exact, summary
    assert len(decisions.by_query()) == n and differing == 0, summary


async def test_queries_of_a_redis_outage_are_committed_only_once_stored(deployed, fault_services):
    """Queries arrive while Redis is down and their worker is SIGKILLed before it is back:
    nothing was published or committed, so the next worker decides each of them once and
    stores it, and their later feedback joins. (Before, the first worker routed them in
    memory and committed them; their decisions died with it and their feedback never
    joined.)"""
    n = 20
    traffic = make_traffic(deployed.scope, n, seed=14)
    window = Window(fault_services.redis.url, traffic)
    first = deployed.start_worker()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            await until(lambda: "assigned partitions" in deployed.log(0), timeout=60,
                        what="the first worker's assignment")  # fmt: skip
            fault_services.redis.stop(keep_data=True)
            await publisher.publish([("queries", traffic.query(i)) for i in range(n)])
            await until(lambda: retried(deployed, "queries"), timeout=60,
                        what="the batch waiting for Redis")  # fmt: skip
            published_while_down = len(decisions.got)
            deployed.kill(first)
            fault_services.redis.start()
            second = deployed.start_worker()
            await until(lambda: len(decisions.by_query()) == n, timeout=90, what="decisions")
            feedback = [("feedback", e) for i in range(n) for e in traffic.feedback(i)]
            await publisher.publish(feedback)
            await grown_or_stalled(window, n, timeout=60, stall=8)
            check = await window.check(range(n))
            redelivered, _ = decisions_consistent(decisions)
    finally:
        await window.close()
    record("redis_down_then_sigkill", {
        "queries": n, "published_while_down": published_while_down,
        "window_records": check.entries, "lost": len(check.lost),
        "decisions": len(decisions.got), "redelivered_decisions": redelivered,
    })  # fmt: skip
    summary = (f"{published_while_down} decisions published while Redis was down; "
               f"{len(check.lost)} lost, {check.doubled} doubled of {n}")  # fmt: skip
    assert published_while_down == 0, summary
    assert redelivered == 0, summary  # each query decided once, by the second worker
    assert check.exact and check.entries == n, summary
    assert second.poll() is None


async def test_redis_hung_the_stream_waits_and_loses_nothing(deployed, fault_services):
    """Redis stops answering without closing its sockets (SIGSTOP: a hung host, a partition):
    each call gives up after RACER_REDIS_TIMEOUT_S, nothing is published meanwhile, and the
    batches go through once Redis answers."""
    n1, n2, hang_s = 300, 300, 10.0
    n = n1 + n2
    traffic = make_traffic(deployed.scope, n, seed=15)
    window = Window(fault_services.redis.url, traffic)
    worker, started = deployed.start_worker(), time.monotonic()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            await publisher.publish(traffic.events(range(n1)))
            await until(lambda: _at_least(window, n1), timeout=60, what="the first records")
            fault_services.redis.pause()
            hung_at = time.monotonic()
            hung = {traffic.query_id(i) for i in range(n1, n)}
            await publisher.publish(traffic.events(range(n1, n)), rate=200)  # ~3.5 s
            await until(lambda: retried(deployed, "queries"), timeout=hang_s,
                        what="a batch waiting for Redis")  # fmt: skip
            await asyncio.sleep(max(0.0, hang_s - (time.monotonic() - hung_at)))  # the fault
            during = sum(q in hung for q in decisions.by_query())
            fault_services.redis.resume()
            resumed_at = time.monotonic()
            await until(lambda: hung <= decisions.by_query().keys(), timeout=90,
                        what="the hang's queries decided")  # fmt: skip
            decided_s = time.monotonic() - resumed_at
            await grown_or_stalled(window, n, timeout=90, stall=15)
            check = await window.check(range(n))
    finally:
        await window.close()
    figures = {
        "queries": n, "queries_during_hang": n2, "hang_s": round(resumed_at - hung_at, 1),
        "decided_during_hang": during, "route_retries": retried(deployed, "queries"),
        "seconds_from_resume_to_hang_queries_decided": round(decided_s, 1),
        "window_records": check.entries, "lost": len(check.lost), "doubled": check.doubled,
        "seconds_from_resume_to_settled_window": round(time.monotonic() - resumed_at, 1),
        "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("redis_hung", figures)
    summary = (
        f"{during} of {n2} queries decided during an {hang_s:.0f} s Redis hang; "
        f"{len(check.lost)} lost, {check.doubled} doubled of {n}"
    )
    assert during == 0, summary
    exact = check.exact and check.entries == n
    assert exact, summary
    assert worker.poll() is None and not crash_lines(deployed.log(0)), summary
