"""Real workers on the real broker and Redis: routing, feedback, recalibration, failures."""

import asyncio
import re
import urllib.request

import numpy as np
import pytest

from racer_online import core
from racer_online.local.services import free_port
from racer_online.messages import DeadLetter
from racer_online.offline.datasets import load_outcomes
from racer_online.offline.evaluation import task_router_records
from racer_online.store import keys
from racer_online.store.connection import connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records():
    data = task_router_records(load_outcomes())
    return data.take(np.random.default_rng(1).permutation(len(data))[:1500])


def queries(records, rows, scope):
    return [
        {"query_id": records.query_ids[i], "scope": scope,
         "scores": dict(zip(records.models, records.scores[i].tolist(), strict=True))}
        for i in rows
    ]  # fmt: skip


def labels(records, rows, scope):
    return [
        {"query_id": records.query_ids[i], "scope": scope,
         "labels": dict(zip(records.models, records.labels[i].astype(int).tolist(), strict=True))}
        for i in rows
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def scopes_file(deployment, records):
    deployment.write_scopes(records.models)


@pytest.fixture
def redis_url(request, redis_url):
    """The session's Redis; ``indirect`` parametrisation with "redis-cluster" swaps in a
    3-master Redis Cluster for the whole deployment (workers and checks alike)."""
    if getattr(request, "param", "redis") == "redis-cluster":
        return request.getfixturevalue("redis_cluster_url")
    return redis_url


ON_BOTH = pytest.mark.parametrize("redis_url", ["redis", "redis-cluster"], indirect=True)


async def window_length(redis_url, scope):
    client = connect(redis_url)
    try:
        return await client.xlen(keys.window(scope))
    finally:
        await client.aclose()


async def test_queries_in_decisions_out_bad_messages_to_the_dlq(deployment, records):
    deployment.start_worker()
    good = queries(records, range(200), deployment.scope)
    bad = [b"\xff\xfe not utf-8", b"{not json", b'{"query_id": "x"}',
           b'{"query_id": "y", "scope": "nope", "scores": {"a": 0.5}}',
           b'{"query_id": "z", "scores": {"a": NaN}}']  # fmt: skip
    await deployment.send("queries", good[:100] + bad + good[100:])
    decisions = await deployment.collect("decisions", 200)
    assert sorted(d["query_id"] for d in decisions) == sorted(q["query_id"] for q in good)
    first = decisions[0]
    assert first["threshold_status"] == "fallback" and first["lam"] == 1.0
    assert len(first["models"]) == len(records.models)  # a fresh scope: every model
    dead = [DeadLetter.model_validate(d) for d in await deployment.collect("dlq", len(bad))]
    assert sorted(d.raw for d in dead) == sorted(bad)
    assert {d.source_topic for d in dead} == {deployment.topics["queries"]}
    assert all(d.reason and d.offset >= 0 and d.partition >= 0 for d in dead)
    reasons = " | ".join(sorted(d.reason for d in dead))
    assert "invalid JSON" in reasons and "unknown scope 'nope'" in reasons


@ON_BOTH
async def test_feedback_fills_the_window_and_the_threshold_matches_the_core(
    deployment, records, redis_url
):
    deployment.start_worker()
    rows = range(600)
    await deployment.send("queries", queries(records, rows, deployment.scope))
    await deployment.collect("decisions", 600)
    await deployment.send("feedback", labels(records, rows, deployment.scope))
    updates = await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] == 600)
    final = updates[-1]
    assert await window_length(redis_url, deployment.scope) == 600
    expected = core.calibrate(
        records.scores[:600], records.labels[:600].astype(bool), alpha=0.1, delta=0.1
    )
    assert final["status"] == "certified" and final["m_star"] == expected.m_star
    assert final["lam"] == pytest.approx(expected.lam_hat, abs=0)
    # Every worker applies it: new decisions carry the certificate.
    await deployment.send("queries", queries(records, range(600, 610), deployment.scope))
    decisions = await deployment.collect(
        "decisions",
        10**6,
        until=lambda got: sum(d["threshold_version"] == final["version"] for d in got) >= 10,
    )
    latest = [d for d in decisions if d["threshold_version"] == final["version"]]
    assert latest and all(
        d["lam"] == final["lam"] and d["threshold_status"] == "certified" for d in latest
    )


def scrape(port) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def consumer_lags(text) -> dict[tuple[str, int], float]:
    lags = {}
    for line in text.splitlines():
        if line.startswith("racer_consumer_lag{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            lags[labels["topic"], int(labels["partition"])] = float(line.rsplit(" ", 1)[1])
    return lags


def metric(text, name, scope):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'scope="{scope}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_workers_split_partitions_and_one_recalibrates(deployment, records):
    ports = [free_port(), free_port()]
    workers = [deployment.start_worker(RACER_WEB_PORT=str(p)) for p in ports]
    # Both must be in the routing group before the stream starts.
    await deployment.group_members("route", 2)
    rows = range(800)
    await deployment.send("queries", queries(records, rows, deployment.scope))
    await deployment.collect("decisions", 800)
    await deployment.send("feedback", labels(records, rows, deployment.scope))
    await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] == 800)
    texts = [scrape(p) for p in ports]
    decided = [metric(t, "racer_decisions_total", deployment.scope) for t in texts]
    assert sum(decided) == 800 and min(decided) > 0, decided  # both served partitions
    # Every input partition reports its lag on the worker that owns it: nothing left.
    lags = {key: value for t in texts for key, value in consumer_lags(t).items()}
    for name in ("queries", "feedback"):
        assert {p for topic, p in lags if topic == deployment.topics[name]} == {0, 1, 2, 3}
    assert set(lags.values()) == {0.0}, lags
    recalibrating = ["threshold v" in deployment.log(i) for i in range(len(workers))]
    assert sum(recalibrating) == 1, recalibrating


@ON_BOTH
async def test_sigkill_mid_stream_loses_and_doubles_nothing(deployment, records, redis_url):
    worker = deployment.start_worker()
    rows = np.arange(1500)
    for chunk in np.array_split(rows, 5):
        await deployment.send("queries", queries(records, chunk, deployment.scope))
        await deployment.send("feedback", labels(records, chunk, deployment.scope))
        await asyncio.sleep(0.3)
        deployment.kill(worker)  # SIGKILL: no commit, no goodbye
        worker = deployment.start_worker()
    deadline = asyncio.get_running_loop().time() + 90
    while await window_length(redis_url, deployment.scope) < 1500:
        assert asyncio.get_running_loop().time() < deadline, "window never filled"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # let any redelivered tail land
    assert await window_length(redis_url, deployment.scope) == 1500
