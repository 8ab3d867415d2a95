"""Real workers on the real broker and Redis: routing, feedback, recalibration, failures."""

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from racer_online import core
from racer_online.datasets import load_outcomes
from racer_online.local.processes import free_port
from racer_online.messages import DeadLetter
from racer_online.offline.evaluation import task_router_records
from racer_online.service.window import quantise
from racer_online.store import keys
from racer_online.store.connection import connect
from racer_online.testing import (
    LOCAL_AUDIT_KEY,
    listening_addresses,
    metric_samples,
    metric_total,
    scrape,
    until,
)

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
    placed, n_partitions = await deployment.collect("decisions", 200, placed=True)
    decisions = [d for _, _, d in placed]
    assert sorted(d["query_id"] for d in decisions) == sorted(q["query_id"] for q in good)
    # Keyed by scope and query id, in the partition the Java client's default partitioner
    # picks.
    every = list(range(n_partitions))
    assert n_partitions > 1 and all(
        key == f"{d['scope']}/{d['query_id']}".encode()
        and partition == DefaultPartitioner()(key, every, every)
        for partition, key, d in placed
    )
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
    scores = quantise(records.scores[:600])  # what the worker decides on and the window holds
    expected = core.calibrate(
        scores, records.labels[:600].astype(bool), alpha=0.1, delta=0.1, bound="anytime",
        p_abstain=quantise(np.prod(1.0 - scores, axis=1)),
    )  # fmt: skip
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


def split_between(deployment, topic: str, workers: int) -> bool:
    """Each of the workers owns partitions of ``topic`` and together they own each once."""
    owned = [
        deployment.ready(i).get("assignment", {}).get(deployment.topics[topic], [])
        for i in range(workers)
    ]
    every = sorted(p for partitions in owned for p in partitions)
    return all(owned) and every == list(range(deployment.partitions))


def consumer_lags(text) -> dict[tuple[str, int], float]:
    return {
        (labels["topic"], int(labels["partition"])): value
        for labels, value in metric_samples(text, "racer_consumer_lag")
    }


async def test_two_workers_split_partitions_and_one_recalibrates(deployment, records):
    workers = [deployment.start_worker(), deployment.start_worker()]
    ports = deployment.web_ports
    # Both must own partitions of both input topics before the stream starts.
    for name in ("queries", "feedback"):
        await until(lambda n=name: split_between(deployment, n, len(workers)), timeout=60,
                    what=f"both workers to own {name} partitions")  # fmt: skip
    rows = range(800)
    await deployment.send("queries", queries(records, rows, deployment.scope))
    await deployment.collect("decisions", 800)
    await deployment.send("feedback", labels(records, rows, deployment.scope))
    await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] == 800)
    texts = [scrape(p) for p in ports]
    decided = [metric_total(t, "racer_decisions_total", scope=deployment.scope) for t in texts]
    assert sum(decided) == 800 and min(decided) > 0, decided  # both served partitions
    # Every input partition reports its lag on the worker that owns it: nothing left, once
    # each worker has refreshed it (RACER_LAG_REFRESH_S, on the worker's own schedule).
    inputs = {deployment.topics[name] for name in ("queries", "feedback")}

    def lags_settled():
        lags = {key: value for p in ports for key, value in consumer_lags(scrape(p)).items()}
        return set(lags) == {(t, p) for t in inputs for p in range(4)} and lags

    await until(lambda: (got := lags_settled()) and set(got.values()) == {0.0}, timeout=60,
                what="both workers' lag on every partition, nothing left")  # fmt: skip
    recalibrating = ["threshold v" in deployment.log(i) for i in range(len(workers))]
    assert sum(recalibrating) == 1, recalibrating
    # The leader declared its output topic once, not on each of its many ticks.
    declared = f"Creating topic {deployment.topics['thresholds']!r}"
    assert [deployment.log(i).count(declared) for i in range(len(workers))] == [
        int(r) for r in recalibrating
    ]


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
    await until(lambda: _filled(redis_url, deployment.scope, 1500), timeout=90, what="the window")
    # Every feedback record committed: no redelivered tail can land after this.
    group = f"{deployment.env['RACER_APP_ID']}.feedback"
    await until(lambda: deployment.all_committed("feedback", group), timeout=60,
                what="the feedback group to commit every record")  # fmt: skip
    assert await window_length(redis_url, deployment.scope) == 1500


async def _filled(redis_url, scope, n):
    return await window_length(redis_url, scope) >= n


async def test_the_web_server_listens_where_racer_web_host_says(deployment):
    deployment.start_worker()  # the default: loopback only
    # As the containers set it, with the token that listening beyond loopback needs.
    deployment.start_worker(RACER_WEB_HOST="0.0.0.0", RACER_WEB_TOKEN="a-token-for-this-test")
    for index in range(2):
        await deployment.wait_answering(index)
    bound = [listening_addresses(port) for port in deployment.web_ports]
    assert bound == [{"127.0.0.1"}, {"0.0.0.0"}], bound


def test_a_broker_that_does_not_answer_stops_the_worker_in_one_line(redis_url):
    nobody = f"kafka://127.0.0.1:{free_port()}"  # a port nothing listens on
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    env = clean | {"RACER_KAFKA_BROKER": nobody, "RACER_REDIS_URL": redis_url,
                   "RACER_WEB_PORT": str(free_port()),
                   "RACER_AUDIT_KEY": LOCAL_AUDIT_KEY}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "racer_online", "worker"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"racer-online: error: the broker at {nobody} does not answer (RACER_KAFKA_BROKER)"
    ]


async def test_workers_on_one_redis_share_the_audit_key_or_refuse_to_start(deployment):
    """Same key: both start. Another key, or none, once a key's fingerprint is stored: the
    worker refuses in one line, before it reaches the broker."""
    deployment.write_scopes(("a", "b"))
    for index in range(2):
        deployment.start_worker()  # the deployment's key
        await deployment.wait_answering(index)
    stored = await connect(deployment.redis_url).get(keys.audit_key_fingerprint())
    assert stored is not None and LOCAL_AUDIT_KEY.encode() not in stored  # never the key
    env = deployment.env | {"RACER_WEB_PORT": str(free_port())}
    refusals = {
        "another key": env | {"RACER_AUDIT_KEY": "not-the-deployment's"},
        "no key": {k: v for k, v in env.items() if k != "RACER_AUDIT_KEY"},
    }
    for case, worker_env in refusals.items():
        result = subprocess.run(
            [sys.executable, "-m", "racer_online", "worker"],
            env=worker_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (case, result.stderr)
        assert lines[0].startswith("racer-online: error: RACER_AUDIT_KEY "), (case, lines)
        assert "fingerprint" in lines[0] and "not-the" not in lines[0], (case, lines)
    assert all(w.poll() is None for w in deployment.workers)  # the two started keep running
