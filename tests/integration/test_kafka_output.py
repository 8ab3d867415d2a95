"""What the workers write to Kafka, through broker faults, on Apache Kafka.

- A producer retry: one node of the 3-node cluster is paused (SIGSTOP) mid-stream. Every
  send to the other nodes waits for it (acks=all) past the producer's request timeout, so
  the producer retries batches the leaders already appended: without idempotence each
  retry is a second copy on the decisions topic (or, once the batch expires, a failed send
  that stops the worker and redelivers its batch); with it the broker drops the copies.
- A threshold send that fails: the broker is SIGKILLed for 45 s while the leader stores a
  threshold and alerts; when it is back, the threshold and every alert Redis holds reach
  their topics, each once (service/outbox.py; a new leader's catching up, and a send
  that fails for good: tests/service/test_outbox.py).

Figures go to ``artifacts/reliability/<name>.json`` (docs/reliability.md, "Everyday
operations").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from test_faults import MODELS, Publisher, Tail, Window, make_traffic, record, until
from test_kafka_faults import deployed, stream_with  # noqa: F401  (the fixture)

from racer_online.core.routing import members, set_misses
from racer_online.core.scoring import entry_levels
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.store import keys

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.apache]
PAUSE_S = 12


async def stored_thresholds(redis_url: str, scope: str) -> dict[int, float]:
    """Every threshold Redis holds for the scope (its history): version -> lam."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        rows = await client.xrange(keys.history(scope), "-", "+")
    finally:
        await client.aclose()
    parsed = [ThresholdMessage.parse(fields[b"json"]) for _, fields in rows]
    return {t.version: t.lam for t in parsed}


def routing_figures(
    decisions: list[dict[str, Any]], traffic: Any, stored: dict[int, float], *, after: int
) -> dict[str, Any]:
    """Decisions on a threshold Redis does not hold (the lam = 1 start, version 0, aside),
    and the miss rate of the sets at the decisions' thresholds over the 1,000 decisions
    after the ``after``-th one (every decision here is an audit, which invokes every
    model: the set the threshold picks is what a non-audited query would get)."""
    uncertain = sum(d["threshold_version"] != 0 and stored.get(d["threshold_version"])
                    != d["lam"] for d in decisions)  # fmt: skip
    later = decisions[after : after + 1000]
    rows = [int(d["query_id"][1:]) for d in later]
    scores = np.array([[d["scores"][m] for m in MODELS] for d in later])
    lams = np.array([d["lam"] for d in later])[:, None]
    chosen = members(entry_levels(scores, rule="cumulative"), lams)
    misses = set_misses(chosen, traffic.labels[rows].astype(bool))
    return {
        "routed_on_a_threshold_redis_does_not_hold": uncertain,
        "miss_rate_next_1000": round(float(misses.mean()), 3),
        "next_decisions": len(later),
    }


@pytest.mark.parametrize("fault_services", [("apache", 3)], indirect=True)
async def test_a_producer_retry_doubles_no_decision(deployed, fault_services):  # noqa: F811
    kafka = fault_services.broker
    # The producer retries a send unanswered for 3 s; the paused node stalls acks=all sends
    # until the controller fences it (broker.session.timeout.ms, 9 s).
    deployed.env |= {"RACER_PRODUCER_REQUEST_TIMEOUT_S": "3"}
    seen: dict[str, Any] = {}

    async def pause_a_node(window: Window, decisions: Tail, sending: Any) -> dict[str, Any]:
        topic = deployed.topics["decisions"]
        leaders = kafka.metadata([topic]).leaders(topic)
        led = Counter(leaders.values())
        victim = min((1, 2, 3), key=lambda node: led.get(node, 0))  # a follower, mostly
        seen["tail"], seen["before"] = decisions, len(decisions.got)
        kafka.node(victim).pause()  # SIGSTOP: it holds its connections, answers nothing
        paused_at = time.monotonic()
        try:
            # The fault's length: past the controller's fencing of the node (9 s), so that
            # sends wait for it through several 3 s request timeouts.
            await asyncio.sleep(PAUSE_S)
        finally:
            kafka.node(victim).resume()
        resumed_at = time.monotonic()
        since = await window.length()
        await until(lambda: _more(window, since + 100), timeout=120, what="progress")
        progress = time.monotonic() - resumed_at
        await until(kafka.in_sync, timeout=120, what="the replicas back in sync")
        in_sync = time.monotonic() - resumed_at
        return {"paused_node": victim, "decisions_partitions_it_led": led.get(victim, 0),
                "seconds_paused": round(resumed_at - paused_at, 1),
                "seconds_from_resume_to_100_more_records": round(progress, 1),
                "seconds_from_resume_to_in_sync": round(in_sync, 1)}  # fmt: skip

    n = 3000  # about 6,900 events at 100/s: the stream goes on through the pause
    figures = await stream_with(
        deployed, fault_services.redis.url, pause_a_node, n=n, seed=31, rate=100
    )
    retries = [line for line in deployed.log(0).splitlines()
               if "Got error produce response" in line]  # fmt: skip
    figures["producer_retries_logged"] = len(retries)
    traffic = make_traffic(deployed.scope, n, seed=31)
    tail: Tail = seen["tail"]
    decisions = [json.loads(raw) for _, raw in tail.got]
    stored = await stored_thresholds(fault_services.redis.url, deployed.scope)
    figures |= routing_figures(decisions, traffic, stored, after=seen["before"])
    record("kafka_producer_retry", figures)
    summary = json.dumps(figures)
    assert figures["fault_mid_stream"] and figures["producer_retries_logged"], summary
    # The idempotent producer's own retries add no copy; a batch whose sends the producer
    # gave up on is sent again by its consumer (at least once), and each such copy is the
    # stored first decision, byte for byte: a consumer deduplicates it by its key.
    assert figures["redelivered_decisions_differing"] == 0, summary
    assert figures["lost"] == figures["doubled"] == figures["wrong_labels"] == 0, summary
    assert figures["window_records"] == figures["decided_queries"] == n, summary
    assert figures["routed_on_a_threshold_redis_does_not_hold"] == 0, summary
    assert figures["workers_alive"] == 1 and not figures["crash_lines"], summary


async def _more(window: Window, n: int) -> bool:
    return await window.length() >= n


class Outbox:
    """What Redis holds of the scope's thresholds and alerts, beside what the topics got."""

    def __init__(self, deployment: Any, redis_url: str) -> None:
        self.deployment, self.scope = deployment, deployment.scope
        self.client = aioredis.Redis.from_url(redis_url, socket_timeout=2)

    async def version(self) -> int:
        return int(await self.client.hget(keys.threshold(self.scope), "version") or 0)

    async def alerts(self) -> list[bytes]:
        rows = await self.client.xrange(keys.alerts(self.scope), "-", "+")
        return [fields[b"json"] for _, fields in rows]

    async def published(self) -> tuple[list[ThresholdMessage], list[AlertMessage]]:
        t = await self.deployment.collect("thresholds", 10_000, timeout=3)
        a = await self.deployment.collect("alerts", 10_000, timeout=3)
        return [ThresholdMessage(**m) for m in t], [AlertMessage(**m) for m in a]


@pytest.mark.parametrize("fault_services", [("apache", 1)], indirect=True)
async def test_a_threshold_and_alerts_stored_while_the_broker_is_down_arrive_once(
    deployed,  # noqa: F811
    fault_services,
):
    kafka, n = fault_services.broker, 10
    # No feedback: each audited query enters the window when its 4 s horizon ends (the
    # leader's sweep, which needs Redis only), so a threshold is due while the broker is
    # down; 10 records certify nothing, so a stale_calibration alert comes every 5 s.
    deployed.env |= {"RACER_PENDING_TTL_S": "4", "RACER_THRESHOLD_MAX_AGE_S": "5",
                     "RACER_PRODUCER_REQUEST_TIMEOUT_S": "3"}  # fmt: skip
    outbox = Outbox(deployed, fault_services.redis.url)
    traffic = make_traffic(deployed.scope, n, seed=32)
    try:
        deployed.start_worker()
        await until(lambda: _published_version(outbox, 1), timeout=90, what="v1 published")
        async with Publisher(deployed) as publisher:
            await publisher.publish([("queries", traffic.query(i)) for i in range(n)])
        decided = await deployed.collect("decisions", n, timeout=60)
        assert len(decided) == n
        group = f"{deployed.env['RACER_APP_ID']}.route"  # else a redelivery decides again
        await until(lambda: deployed.all_committed("queries", group), timeout=60,
                    what="the queries committed")  # fmt: skip
        before = (await outbox.version(), len(await outbox.alerts()))
        kafka.kill(1)  # SIGKILL: the single node is gone
        killed_at = time.monotonic()
        await until(lambda: _stored_more(outbox, before), timeout=60,
                    what="a threshold and an alert stored while the broker is down")  # fmt: skip
        # The outage outlasts 40 s, aiokafka's default request timeout: a send that is not
        # idempotent expires then, and nothing sent it again.
        await asyncio.sleep(max(0.0, 45 - (time.monotonic() - killed_at)))
        stored_version, stored_alerts = await outbox.version(), await outbox.alerts()
        back = time.monotonic()
        await asyncio.to_thread(kafka.node(1).launch, 90.0)
        await until(lambda: 1 in kafka.metadata([]).brokers, timeout=90, what="the broker")
        serving = time.monotonic()
        await until(lambda: _published_version(outbox, stored_version), timeout=120,
                    what=f"v{stored_version} published")  # fmt: skip
        resumed = time.monotonic() - serving
        await until(lambda: _published_alerts(outbox, len(stored_alerts)), timeout=60,
                    what="the stored alerts published")  # fmt: skip
        thresholds, alerts = await outbox.published()
        decisions = await deployed.collect("decisions", 10_000, timeout=3)
        window = Window(fault_services.redis.url, traffic)
        check = await window.check(range(n))
        await window.close()
        worker_alive = deployed.workers[0].poll() is None
    finally:
        await outbox.client.aclose()
    versions = [t.version for t in thresholds]
    published_alerts = [(a.kind, a.at, a.message) for a in alerts]
    stored_alerts_ = [(a.kind, a.at, a.message) for a in map(AlertMessage.parse, stored_alerts)]
    stored = await stored_thresholds(fault_services.redis.url, deployed.scope)
    ids = [d["query_id"] for d in decisions]
    figures = {
        "queries": n, "decided_queries": len(set(ids)),
        "doubled_decisions": len(ids) - len(set(ids)),
        "window_records": check.entries, "lost": len(check.lost), "doubled": check.doubled,
        "stored_while_down": {"thresholds": sorted(v for v in stored if v > before[0]),
                              "alerts": len(stored_alerts) - before[1]},
        "thresholds_published": versions, "alerts_published": len(alerts),
        "alerts_stored": len(stored_alerts_), "seconds_broker_down": round(back - killed_at, 1),
        "seconds_to_restart_the_broker": round(serving - back, 1),
        "seconds_from_broker_serving_to_the_threshold_published": round(resumed, 1),
        "routed_on_a_threshold_redis_does_not_hold": sum(
            d["threshold_version"] != 0 and stored.get(d["threshold_version"]) != d["lam"]
            for d in decisions),
        "worker_alive": worker_alive,
    }  # fmt: skip
    record("threshold_send_failure", figures)
    summary = json.dumps(figures)
    assert stored_version in versions, summary  # stored while the broker was down, published
    assert len(versions) == len(set(versions)), summary  # each once
    assert published_alerts[: len(stored_alerts_)] == stored_alerts_, summary  # once, in order
    assert len(set(published_alerts)) == len(published_alerts), summary
    assert figures["lost"] == figures["doubled"] == figures["doubled_decisions"] == 0, summary
    assert figures["routed_on_a_threshold_redis_does_not_hold"] == 0, summary
    assert worker_alive, summary


async def _published_version(outbox: Outbox, version: int) -> bool:
    thresholds, _ = await outbox.published()
    return any(t.version >= version for t in thresholds)


async def _published_alerts(outbox: Outbox, count: int) -> bool:
    _, alerts = await outbox.published()
    return len(alerts) >= count


async def _stored_more(outbox: Outbox, before: tuple[int, int]) -> bool:
    return await outbox.version() > before[0] and len(await outbox.alerts()) > before[1]
