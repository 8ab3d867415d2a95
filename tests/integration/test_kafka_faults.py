"""Faults of the broker itself and of the consumer group, on Apache Kafka.

A 3-node KRaft cluster (replication factor 3, min.insync.replicas 2): the node that leads
the most queries partitions is SIGKILLed mid-stream and restarted; then every node in turn
gets a rolling restart. A single node is SIGKILLed and restarted on its log. And workers
join and leave every few seconds for a minute (a rebalance storm, on the session's broker).

The traffic and the checks are `test_faults`': every query graded, each window entry maps
back to one query; 0 lost, 0 doubled, every query decided, no query decided twice with
different contents. Figures go to ``artifacts/reliability/<name>.json`` and stdout (``-s``).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from test_faults import (
    Publisher,
    Tail,
    Window,
    _at_least,
    crash_lines,
    decisions_consistent,
    make_traffic,
    record,
    settled,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

Fault = Callable[[Window, Tail, asyncio.Task[None]], Awaitable[dict[str, Any]]]


@pytest.fixture
def deployed(fault_deployment):
    fault_deployment.write_scopes(("m0", "m1", "m2"))
    # Faust's own topics (its leader election) get the cluster's replication too.
    fault_deployment.env |= {"RACER_TOPICS__REPLICATION": str(fault_deployment.replication)}
    return fault_deployment


def longest_gap(tail: Tail, since: float) -> float:
    """The longest time without a decision arriving, from ``since`` to the last one."""
    times = [since] + [at for at, _ in tail.got if at >= since]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def stream_with(
    deployed: Any, redis_url: str, fault: Fault, *, n: int, seed: int, rate: float
) -> dict[str, Any]:
    """One worker; queries and feedback at ``rate`` events/s; ``fault`` once a fifth of the
    window is in, while the stream goes on. The window, decisions and workers, checked."""
    traffic = make_traffic(deployed.scope, n, seed=seed)
    window = Window(redis_url, traffic)
    deployed.start_worker()
    started = time.monotonic()
    try:
        async with Publisher(deployed) as publisher, Tail(deployed, "decisions") as decisions:
            sending = asyncio.create_task(publisher.publish(traffic.events(range(n)), rate=rate))
            await until(lambda: _at_least(window, n // 5), timeout=60, what="the first records")
            fault_at = time.monotonic()
            figures = await fault(window, decisions, sending)
            figures["fault_mid_stream"] = not sending.done()
            await sending
            stream_end = time.monotonic()
            await settled(window, n, timeout=120)
            await until(lambda: len(decisions.by_query()) >= n, timeout=60, what="decisions")
            check = await window.check(range(n))
            redelivered, differing = decisions_consistent(decisions)
    finally:
        await window.close()
    crashes = [line for i in range(len(deployed.workers)) for line in crash_lines(deployed.log(i))]
    return figures | {
        "queries": n, "window_records": check.entries, "lost": len(check.lost),
        "doubled": check.doubled, "wrong_labels": check.wrong_labels,
        "unknown_entries": check.unknown, "decided_queries": len(decisions.by_query()),
        "redelivered_decisions": redelivered, "redelivered_decisions_differing": differing,
        "longest_decision_gap_s": round(longest_gap(decisions, fault_at), 1),
        "seconds_from_stream_end_to_full_window": round(time.monotonic() - stream_end, 1),
        "workers_alive": sum(w.poll() is None for w in deployed.workers),
        "crash_lines": crashes[:5], "wall_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def assert_exact(figures: dict[str, Any], *, workers_alive: int = 1) -> None:
    summary = (
        f"{figures['lost']} lost, {figures['doubled']} doubled, {figures['wrong_labels']} wrong "
        f"labels of {figures['queries']}; {figures['decided_queries']} decided, "
        f"{figures['redelivered_decisions_differing']} redelivered decisions differing; "
        f"crash lines: {figures['crash_lines'][:3]}"
    )
    assert figures["fault_mid_stream"], summary
    assert figures["lost"] == figures["doubled"] == figures["wrong_labels"] == 0, summary
    assert figures["window_records"] == figures["queries"] == figures["decided_queries"], summary
    assert figures["redelivered_decisions_differing"] == 0, summary
    assert figures["workers_alive"] == workers_alive and not figures["crash_lines"], summary


@pytest.mark.apache
@pytest.mark.parametrize("fault_services", [("apache", 3)], indirect=True)
async def test_the_leader_of_the_queries_partitions_killed_and_restarted(deployed, fault_services):
    kafka = fault_services.broker

    async def kill_the_leader(window: Window, decisions: Tail, sending: Any) -> dict[str, Any]:
        leaders = kafka.metadata([deployed.topics["queries"]]).leaders(deployed.topics["queries"])
        victim = max(set(leaders.values()), key=list(leaders.values()).count)
        killed_at = time.monotonic()
        kafka.kill(victim)  # SIGKILL: no controlled shutdown, its leaderships just stop
        moved = await until(lambda: _led_without(kafka, deployed, victim), timeout=60,
                            what="new leaders")  # fmt: skip
        since = await window.length()
        resumed = await until(lambda: _at_least(window, since + 100), timeout=60, what="progress")
        back = time.monotonic()
        await asyncio.to_thread(kafka.restart, victim)
        restarted = time.monotonic() - back
        in_sync = await until(kafka.in_sync, timeout=120, what="the replicas back in sync")
        return {
            "killed_node": victim, "partitions_it_led": sorted(
                p for p, node in leaders.items() if node == victim),
            "seconds_to_new_leaders": round(moved, 1),
            "seconds_to_100_more_records": round(moved + resumed, 1),
            "seconds_to_restart_node": round(restarted, 1),
            "seconds_from_restart_to_in_sync": round(restarted + in_sync, 1),
            "seconds_from_kill_to_in_sync": round(time.monotonic() - killed_at, 1),
        }  # fmt: skip

    figures = await stream_with(
        deployed, fault_services.redis.url, kill_the_leader, n=5000, seed=21, rate=250
    )
    record("kafka_leader_kill", figures)
    assert_exact(figures)


def _led_without(kafka: Any, deployed: Any, victim: int) -> bool:
    leaders = kafka.metadata([deployed.topics["queries"]]).leaders(deployed.topics["queries"])
    return len(leaders) == 4 and all(node not in (victim, -1) for node in leaders.values())


@pytest.mark.apache
@pytest.mark.parametrize("fault_services", [("apache", 3)], indirect=True)
async def test_a_rolling_restart_of_all_three_nodes(deployed, fault_services):
    kafka = fault_services.broker

    async def roll(window: Window, decisions: Tail, sending: Any) -> dict[str, Any]:
        steps = []
        for node in (1, 2, 3):
            began = time.monotonic()
            await asyncio.to_thread(kafka.restart, node)  # SIGTERM: a controlled shutdown
            up = time.monotonic() - began
            # The next node may go only once this one is back in every in-sync set: else
            # two of three replicas are out and acks=all writes fail (min.insync.replicas 2).
            synced = await until(kafka.in_sync, timeout=120, what=f"node {node} in sync")
            steps.append({"node": node, "restart_s": round(up, 1),
                          "in_sync_s": round(up + synced, 1)})  # fmt: skip
        return {"restarts": steps}

    figures = await stream_with(deployed, fault_services.redis.url, roll, n=6000, seed=22, rate=200)
    record("kafka_rolling_restart", figures)
    assert_exact(figures)


@pytest.mark.apache
@pytest.mark.parametrize("fault_services", [("apache", 1)], indirect=True)
async def test_a_single_node_broker_killed_and_restarted_on_its_log(deployed, fault_services):
    kafka = fault_services.broker

    async def crash(window: Window, decisions: Tail, sending: Any) -> dict[str, Any]:
        began = time.monotonic()
        await asyncio.to_thread(kafka.restart, 1, kill=True)  # SIGKILL, then its own log
        down = time.monotonic() - began
        since = await window.length()
        resumed = await until(lambda: _at_least(window, since + 100), timeout=60, what="progress")
        return {"seconds_down": round(down, 1), "seconds_to_100_more_records": round(
            down + resumed, 1)}  # fmt: skip

    figures = await stream_with(
        deployed, fault_services.redis.url, crash, n=3000, seed=23, rate=250
    )
    record("kafka_single_node_restart", figures)
    assert_exact(figures)


async def test_a_rebalance_storm_loses_doubles_and_changes_nothing(deployed, fault_services):
    """Workers join and leave (SIGTERM, one in four SIGKILL) every 2-5 s for a minute."""
    rng = np.random.default_rng(17)

    async def storm(window: Window, decisions: Tail, sending: Any) -> dict[str, Any]:
        live, changes, began = list(deployed.workers), [], time.monotonic()
        while time.monotonic() - began < 60:
            await asyncio.sleep(float(rng.uniform(2, 5)))  # the storm's own pace
            if len(live) < 2 or (len(live) < 4 and rng.random() < 0.5):
                live.append(deployed.start_worker())
                changes.append("join")
            else:
                leaving = live.pop(int(rng.integers(len(live))))
                how = signal.SIGKILL if rng.random() < 0.25 else signal.SIGTERM
                deployed.kill(leaving, how)
                changes.append(how.name)
        return {"joins": changes.count("join"), "sigterms": changes.count("SIGTERM"),
                "sigkills": changes.count("SIGKILL"), "storm_s": round(
                    time.monotonic() - began, 1), "workers_at_end": len(live)}  # fmt: skip

    figures = await stream_with(
        deployed, fault_services.redis.url, storm, n=5000, seed=24, rate=120
    )
    record("rebalance_storm", figures)
    assert_exact(figures, workers_alive=figures["workers_at_end"])
