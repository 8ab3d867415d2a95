"""Redis failover on Apache Kafka: a Sentinel deployment whose primary is SIGKILLed
mid-stream, and a primary that turns replica under a plain ``redis://`` URL.

The traffic and the window check are `test_faults`': every query graded, each window entry
maps back to one query; 0 lost, 0 doubled. Besides, each decision's threshold must be one
the Redis that serves afterwards still holds in its history (a decision routed on a
threshold that Redis lost with a failover would not be certified on its records), and the
realised miss rate of the 1,000 decisions after the fault is measured. Figures go to
``artifacts/reliability/<name>.json`` and stdout (``-s``); docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from test_faults import (
    MODELS,
    Publisher,
    Tail,
    Traffic,
    Window,
    _at_least,
    crash_lines,
    decisions_consistent,
    grown_or_stalled,
    make_traffic,
    record,
    retried,
)

from racer_online.store import keys
from racer_online.testing import until

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.apache]

ON_APACHE = pytest.mark.parametrize("fault_services", [("apache", 1)], indirect=True)


@pytest.fixture
def deployed(failover_deployment):
    failover_deployment.write_scopes(MODELS)
    return failover_deployment


def after_the_fault(tail: Tail, traffic: Traffic, since: float) -> dict[str, Any]:
    """The first 1,000 decisions that arrived after ``since``: their realised miss rate (no
    invoked model right while one was; the scope's miss = "answerable") and thresholds."""
    first: dict[str, dict[str, Any]] = {}
    for at, raw in tail.got:
        decision = json.loads(raw)
        if at >= since:
            first.setdefault(decision["query_id"], decision)
    decisions = sorted(first.values(), key=lambda d: d["decided_at"])[:1000]
    misses = 0
    for d in decisions:
        labels = dict(zip(MODELS, traffic.labels[int(d["query_id"][1:])], strict=True))
        misses += any(labels.values()) and not any(labels[m] for m in d["models"])
    return {"decisions": decisions, "miss_rate": round(misses / max(1, len(decisions)), 3)}


def uncertified(decisions: list[dict[str, Any]], redis_url: str, scope: str) -> tuple[int, int]:
    """Of the decisions routed on a certified threshold (the second number), those whose
    threshold the Redis now serving does not hold (lost with the failover): not certified
    on the records Redis holds."""
    with redis.Redis.from_url(redis_url) as client:
        held = {json.loads(f[b"json"])["version"] for _, f in client.xrange(keys.history(scope))}
    certified = [d for d in decisions if d["threshold_status"] == "certified"]
    return sum(d["threshold_version"] not in held for d in certified), len(certified)


def outcome(
    check: Any, decisions: Tail, after: dict[str, Any], redis_url: str, scope: str
) -> dict[str, Any]:
    """The figures both tests report on the window, the decisions and their thresholds."""
    redelivered, differing = decisions_consistent(decisions)
    off_threshold, certified = uncertified(after["decisions"], redis_url, scope)
    return {
        "decided_queries": len(decisions.by_query()), "window_records": check.entries,
        "lost": len(check.lost), "doubled": check.doubled, "wrong_labels": check.wrong_labels,
        "redelivered_decisions": redelivered, "redelivered_decisions_differing": differing,
        "routed_on_uncertified_threshold": off_threshold, "certified_decisions": certified,
        "miss_rate_next_1000": after["miss_rate"], "next_decisions": len(after["decisions"]),
    }  # fmt: skip


def normal_clients(port: int, *, but: set[int]) -> set[int]:
    """Ids of the ordinary (not replication) clients connected to the server at ``port``."""
    with redis.Redis("127.0.0.1", port, single_connection_client=True) as client:
        own = client.client_id()
        return {int(c["id"]) for c in client.client_list(_type="normal")} - but - {own}


def role(port: int) -> str:
    with redis.Redis("127.0.0.1", port) as client:
        return str(client.info("replication")["role"])


def failover(from_port: int, to_port: int) -> None:
    """FAILOVER (Redis 6.2+): the primary pauses writes until its replica has all of them,
    then the replica is promoted and the old primary follows it."""
    with redis.Redis("127.0.0.1", from_port) as client:
        client.execute_command("FAILOVER", "TO", "127.0.0.1", to_port, "TIMEOUT", 10_000)


@ON_APACHE
async def test_sentinel_failover_mid_stream_loses_and_doubles_nothing(deployed, replicated_redis):
    """The primary is SIGKILLed while queries and feedback flow; the sentinels
    (down-after-milliseconds 1000, quorum 2 of 3) promote the replica and the worker follows
    it: no query lost or doubled, every query decided once, decisions resume."""
    n, kill_after = 2400, 600
    traffic = make_traffic(deployed.scope, n, seed=21)
    events = traffic.events(range(n))
    old, new = replicated_redis.primary, replicated_redis.replica
    before = Window(replicated_redis.primary_url, traffic)
    worker, started = deployed.start_worker(), time.monotonic()
    async with (
        Publisher(deployed) as publisher,
        Tail(deployed, "decisions") as decisions,
        Tail(deployed, "thresholds") as thresholds,
    ):
        cut = int(len(events) * 0.35)
        await publisher.publish(events[:cut])
        try:
            await until(lambda: _at_least(before, kill_after), timeout=90, what="records")
            await until(lambda: thresholds.got, timeout=30, what="a threshold")
            # the rest at a client's pace (~14 s); the kill lands while it flows
            sending = asyncio.create_task(publisher.publish(events[cut:], rate=250))
            await until(lambda: _at_least(before, kill_after + 100), timeout=30,
                        what="records of the paced stream")  # fmt: skip
        finally:
            await before.close()
        old.kill()
        killed_at = time.monotonic()
        mid_stream = not sending.done()

        async def promoted() -> bool:
            return await asyncio.to_thread(replicated_redis.primary_port) == new.port

        await until(promoted, timeout=60, what="the sentinels to promote the replica")
        promoted_at = time.monotonic()
        await until(lambda: any(at > promoted_at for at, _ in decisions.got), timeout=60,
                    what="a decision after the promotion")  # fmt: skip
        resumed_at = min(at for at, _ in decisions.got if at > promoted_at)
        await sending
        window = Window(f"redis://127.0.0.1:{new.port}/0", traffic)
        try:
            await grown_or_stalled(window, n, timeout=120, stall=15)
            await until(lambda: len(decisions.by_query()) >= n, timeout=30, what="decisions")
            check = await window.check(range(n))
        finally:
            await window.close()
        after = after_the_fault(decisions, traffic, killed_at)
    log = deployed.log(0)
    figures = {
        "queries": n, "feedback_events": len(events) - n, "killed_mid_stream": mid_stream,
        "window_when_killed": kill_after,
        **outcome(check, decisions, after, f"redis://127.0.0.1:{new.port}/0", deployed.scope),
        "down_after_ms": replicated_redis.down_after_ms,
        "seconds_kill_to_promotion": round(promoted_at - killed_at, 1),
        "seconds_kill_to_first_decision": round(resumed_at - killed_at, 1),
        "route_retries": retried(deployed, "queries"),
        "primary_changes_logged": log.count("Redis Sentinel: the primary of"),
        "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("sentinel_failover", figures)
    summary = json.dumps(figures)
    assert mid_stream, summary
    assert check.exact and check.entries == n, summary
    assert figures["decided_queries"] == n, summary
    assert figures["redelivered_decisions_differing"] == 0, summary
    assert figures["routed_on_uncertified_threshold"] == 0, summary
    assert figures["certified_decisions"] > 0, summary
    assert f"the primary of 'mymaster' is at 127.0.0.1:{new.port} now" in log, summary
    assert worker.poll() is None and not crash_lines(log), summary


@ON_APACHE
@pytest.mark.parametrize("replicated_redis", [0], indirect=True)
async def test_a_primary_turned_replica_stops_storing_reconnects_and_resumes(
    deployed, replicated_redis
):
    """A plain ``redis://`` URL names one server. When that server is made a replica (its
    replica promoted), it cannot take a write: the worker says so in one line, drops its
    connections and keeps reconnecting (a pooled connection would otherwise stay on the
    replica forever, even where the address moved on to the new primary), publishes
    nothing, and resumes, losing nothing, once that server is a primary again."""
    n1, n2, n3 = 600, 400, 600
    n = n1 + n2 + n3
    traffic = make_traffic(deployed.scope, n, seed=22)
    a, b = replicated_redis.primary, replicated_redis.replica
    window = Window(replicated_redis.primary_url, traffic)
    worker, started = deployed.start_worker(), time.monotonic()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            await publisher.publish(traffic.events(range(n1)))
            await until(lambda: _at_least(window, n1), timeout=90, what="the first records")
            await window.length()
            own = {int(await window.client.client_id())}
            workers_before = normal_clients(a.port, but=own)
            failover(a.port, b.port)
            await until(lambda: role(a.port) == "slave", timeout=30, what="the demotion")
            demoted_at = time.monotonic()
            outage = {traffic.query_id(i) for i in range(n1, n1 + n2)}
            await publisher.publish(traffic.events(range(n1, n1 + n2)), rate=300)
            await until(lambda: "is a replica (read only)" in deployed.log(0), timeout=30,
                        what="the worker to say the server is a replica")  # fmt: skip
            await until(lambda: retried(deployed, "queries") >= 3, timeout=60,
                        what="batches waiting for a primary")  # fmt: skip
            await until(lambda: not normal_clients(a.port, but=own) & workers_before,
                        timeout=30, what="the worker's old connections dropped")  # fmt: skip
            await until(lambda: deployed.ready(0).get("redis") is False, timeout=30,
                        what="/ready to report Redis unavailable")  # fmt: skip
            during = sum(q in outage for q in decisions.by_query())
            failover(b.port, a.port)  # the same server is the primary again
            await until(lambda: role(a.port) == "master", timeout=30, what="the fail-back")
            back_at = time.monotonic()
            await until(lambda: outage <= decisions.by_query().keys(), timeout=90,
                        what="the outage's queries decided")  # fmt: skip
            resumed_at = min(at for at, raw in decisions.got
                             if json.loads(raw)["query_id"] in outage)  # fmt: skip
            await until(lambda: deployed.ready(0).get("redis") is True, timeout=30,
                        what="/ready to report Redis back")  # fmt: skip
            await publisher.publish(traffic.events(range(n1 + n2, n)))
            await grown_or_stalled(window, n, timeout=90, stall=12)
            check = await window.check(range(n))
            after = after_the_fault(decisions, traffic, demoted_at)
    finally:
        await window.close()
    log = deployed.log(0)
    figures = {
        "queries": n, "queries_while_replica": n2, "replica_s": round(back_at - demoted_at, 1),
        "decided_while_replica": during, "route_retries": retried(deployed, "queries"),
        "replica_lines": log.count("is a replica (read only)"),
        "primary_again_lines": log.count("is a primary again"),
        "seconds_primary_again_to_first_decision": round(resumed_at - back_at, 1),
        **outcome(check, decisions, after, replicated_redis.primary_url, deployed.scope),
        "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip
    record("readonly_plain_url", figures)
    summary = json.dumps(figures)
    assert during == 0, summary
    assert figures["replica_lines"] == 1 and figures["primary_again_lines"] == 1, summary
    assert check.exact and check.entries == n, summary
    assert figures["redelivered_decisions_differing"] == 0, summary
    assert figures["routed_on_uncertified_threshold"] == 0, summary
    assert figures["certified_decisions"] > 0, summary
    assert worker.poll() is None and not crash_lines(log), summary
