"""A replay after the redelivery horizon (issue 20, item 7), on Apache Kafka and real Redis.

`offsets reset --to earliest` once the first decisions' pending records expired: every
query is decided again. Each decision made again says so (`redecided`), and no query enters
the calibration window twice. The horizon is short here (RACER_PENDING_TTL_S=5, so slots
of 5 s); in production it is the feedback horizon plus one slot (docs/reliability.md).
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from test_faults import record

from racer_online.messages import ThresholdMessage
from racer_online.service import store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore
from racer_online.testing import until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.apache,
    pytest.mark.parametrize("fault_services", [("apache", 1)], indirect=True),
]
MODELS = ("m0", "m1", "m2")
N = 60
TOTAL = N + 1  # and a warm-up query


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "racer_online", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def traffic(scope: str) -> tuple[list[dict], list[dict]]:
    queries, labels = [], []
    for i in range(N):
        scores = {m: round(((i * 7 + 3 * k) % 10) / 10 + 0.05, 2) for k, m in enumerate(MODELS)}
        queries.append({"query_id": f"q{i}", "scope": scope, "scores": scores})
        graded = {m: int((i + k) % 3 == 0) for k, m in enumerate(MODELS)}
        labels.append({"query_id": f"q{i}", "scope": scope, "labels": graded})
    return queries, labels


async def test_a_replay_after_the_horizon_marks_every_decision_made_again(fault_deployment):
    deployment = fault_deployment
    deployment.write_scopes(MODELS)
    env = {"RACER_PENDING_TTL_S": "5", "RACER_OFFSET_RESET": "earliest"}
    settings = Settings.load(
        redis_url=deployment.env["RACER_REDIS_URL"], scopes_file=deployment.scopes_file,
        pending_ttl_s=5.0,
    )  # fmt: skip
    store = RedisStore.from_url(deployment.env["RACER_REDIS_URL"], store_config(settings))
    scope = deployment.scope
    try:
        queries, labels = traffic(scope)
        first = deployment.start_worker(**env)
        # A first query decided: the worker consumes, so the traffic is decided within the
        # horizon of its sending. (This one waited for the worker to start, longer than the
        # horizon: it is marked too, as nothing tells it from a query decided before.)
        await deployment.send("queries", [dict(queries[0], query_id="warm-up")])
        await deployment.send("feedback", [dict(labels[0], query_id="warm-up")])
        await deployment.collect("decisions", 1, timeout=120)
        await deployment.send("queries", queries)
        await deployment.send("feedback", labels)
        decided = await deployment.collect("decisions", TOTAL, timeout=120)
        traffic_decided = [d for d in decided if d["query_id"] != "warm-up"]
        assert len(traffic_decided) == N
        assert not any(d.get("redecided") for d in traffic_decided)  # first decisions

        async def window_settled() -> bool:
            stored = await store.load_threshold(scope)
            return stored is not None and ThresholdMessage.parse(stored).n == TOTAL

        await until(window_settled, timeout=90, what="every audited query in the window")

        async def expired() -> bool:
            return all(r is None for r in await store.pending_records(scope, ["q0", f"q{N - 1}"]))

        await until(expired, timeout=60, what="the first decisions' records to expire")
        deployment.kill(first, signal.SIGTERM)

        def reset_once_the_group_is_empty() -> subprocess.CompletedProcess[str] | None:
            done = cli("offsets", "reset", "--to", "earliest", env=deployment.env | env)
            return None if "has live members" in done.stderr else done

        reset = await until(reset_once_the_group_is_empty, timeout=90, what="an empty group")
        assert reset.returncode == 0, reset.stderr
        deployment.start_worker(**env)
        everything = await deployment.collect("decisions", 2 * TOTAL, timeout=120)
        by_query: dict[str, list[dict]] = {}
        for d in everything:
            by_query.setdefault(d["query_id"], []).append(d)
        assert len(everything) == 2 * TOTAL and all(len(ds) == 2 for ds in by_query.values())
        again = [max(ds, key=lambda d: d["decided_at"]) for ds in by_query.values()]
        assert all(d.get("redecided") for d in again)  # downstream can tell

        # The replayed labels complete the records decided again, which enter the window's
        # stream a second time; the window counts each query once.
        async def entered_twice() -> bool:
            return await store.client.xlen(f"racer:{{{scope}}}:window") >= 2 * TOTAL

        await until(entered_twice, timeout=90, what="the replayed audits in the stream")
        # One new query and its labels: the leader recalibrates on the window it reads.
        await deployment.send("queries", [dict(queries[0], query_id="fresh")])
        await deployment.send("feedback", [dict(labels[0], query_id="fresh")])

        async def recalibrated() -> ThresholdMessage | None:
            stored = await store.load_threshold(scope)
            last = None if stored is None else ThresholdMessage.parse(stored)
            return last if last is not None and last.n > TOTAL else None

        threshold = await until(recalibrated, timeout=60, what="the fresh query in the window")
        assert threshold.n == TOTAL + 1  # not 2 TOTAL + 1: no query entered twice
        record("redelivery_beyond_horizon", {
            "queries_sent": 2 * TOTAL, "decided": 2 * TOTAL, "lost": 0,
            "doubled_unmarked": sum(not d.get("redecided") for d in again),
            "marked_redecided": sum(bool(d.get("redecided")) for d in again),
            "window_records": threshold.n, "stream_records": 2 * TOTAL + 1,
        })  # fmt: skip
    finally:
        await store.close()
