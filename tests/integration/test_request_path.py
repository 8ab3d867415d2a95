"""The decision API on a real worker, broker and Redis, as a gateway uses it: curl-like
requests, the Python client turning sets into calls and labels, bad input."""

import json

import httpx
import numpy as np
import pytest

from racer_online.client import (
    AsyncRacerClient,
    AuthenticationError,
    Cascade,
    Cheapest,
    ConflictError,
    RacerClient,
    UnprocessableEntityError,
)
from racer_online.datasets import load_outcomes
from racer_online.offline.evaluation import task_router_records
from racer_online.store import keys
from racer_online.store.connection import connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records():
    data = task_router_records(load_outcomes())
    return data.take(np.random.default_rng(3).permutation(len(data))[:400])


def scores_of(records, i):
    return dict(zip(records.models, records.scores[i].tolist(), strict=True))


def labels_of(records, i):
    return dict(zip(records.models, records.labels[i].astype(int).tolist(), strict=True))


@pytest.fixture
async def worker(deployment, records):
    deployment.write_scopes(records.models)
    deployment.start_worker()
    await deployment.wait_answering()
    return f"http://127.0.0.1:{deployment.web_ports[0]}"


async def stored_pending(redis_url, scope) -> int:
    client = connect(redis_url)
    try:
        found = [k async for k in client.scan_iter(match=keys.pending(scope) + "*")]
        return sum([await client.hlen(k) for k in found])
    finally:
        await client.aclose()


async def test_a_routed_request_is_stored_published_and_answered_the_same_twice(
    deployment, worker, records, redis_url
):
    query = {"query_id": "http-1", "scope": deployment.scope, "scores": scores_of(records, 0)}
    async with httpx.AsyncClient(base_url=worker) as http:
        first = await http.post("/v1/route", json=query)
        again = await http.post("/v1/route", json=query)
        generated = await http.post("/v1/route", json={k: v for k, v in query.items()
                                                       if k != "query_id"})  # fmt: skip
    assert first.status_code == 200 and first.headers["content-type"].startswith("application/json")
    assert again.json() == first.json()  # Redis keeps the first decision
    decision = first.json()
    assert decision["query_id"] == "http-1" and decision["threshold_status"] == "fallback"
    assert decision["models"] and decision["audit"]  # a fresh scope: every model, audited
    assert generated.status_code == 200 and len(generated.json()["query_id"]) == 32
    published = await deployment.collect("decisions", 3)
    assert sorted(d["query_id"] for d in published) == sorted(
        ["http-1", "http-1", generated.json()["query_id"]]
    )
    assert next(d for d in published if d["query_id"] == "http-1") == decision
    assert await stored_pending(redis_url, deployment.scope) == 2


async def test_bad_requests_get_one_problem_each_and_store_nothing(
    deployment, worker, records, redis_url
):
    scope = deployment.scope
    cases = {
        "malformed": (b"{not json", "application/json", 422, "the body is not JSON"),
        "array": (b"[1, 2]", "application/json", 422, "not a JSON object"),
        "schema": (json.dumps({"scope": scope, "scores": {"a": "x"}}).encode(),
                   "application/json", 422, None),
        "unknown scope": (json.dumps({"scope": "nope", "scores": scores_of(records, 0)}).encode(),
                          "application/json", 422, "unknown scope 'nope'"),
        "too large": (b'{"text": "' + b"x" * (2 << 20) + b'"}', "application/json", 413,
                      "too large"),
        "media type": (b"query_id=1", "application/x-www-form-urlencoded", 415, "application/json"),
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=worker) as http:
        for name, (body, ctype, status, detail) in cases.items():
            reply = await http.post("/v1/route", content=body, headers={"content-type": ctype})
            assert reply.status_code == status, name
            assert reply.headers["content-type"].startswith("application/problem+json"), name
            problem = reply.json()
            assert problem["status"] == status and problem["instance"] == "/v1/route", name
            assert detail is None or detail in problem["detail"], (name, problem)
        unknown = await http.post("/v1/feedback", json={"query_id": "q", "labels": {"a": 1}})
        assert unknown.status_code == 422 and "scope" in unknown.json()["detail"]
        elsewhere = await http.post("/v1/feedback", json={"query_id": "q", "scope": "nope",
                                                          "labels": {"a": 1}})  # fmt: skip
        assert elsewhere.status_code == 422
        assert elsewhere.json()["detail"] == "unknown scope 'nope'"
        assert elsewhere.json()["type"] == "urn:racer-online:problem:unknown_scope"
        missing = await http.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["status"] == 404
    assert await stored_pending(redis_url, scope) == 0


async def test_the_client_runs_audits_and_its_labels_certify_a_threshold(
    deployment, worker, records
):
    """Every decision of this deployment is audited (RACER_AUDIT_RATE=1): the client calls
    every model, grades each answer and sends the labels, and the window certifies."""
    scope, prices = deployment.scope, dict.fromkeys(records.models, 0.1)
    n = 120
    async with AsyncRacerClient(worker) as racer:
        for i in range(n):
            truth = labels_of(records, i)

            async def call(model, truth=truth):
                return "right" if truth[model] else "wrong"

            outcome = await racer.complete(call, Cheapest(prices), scope=scope,
                                           scores=scores_of(records, i),
                                           grader=lambda a: a == "right")  # fmt: skip
            assert outcome.decision.audit and set(outcome.answers) == set(records.models)
            assert outcome.labels == truth
    updates = await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] >= n)
    assert updates[-1]["n"] == n and updates[-1]["status"] == "certified"

    with RacerClient(worker) as racer:  # the blocking twin, on the certified threshold
        decision = racer.route(scope, scores=scores_of(records, n), query_id="sync-1")
        assert decision.threshold_status == "certified"
        assert decision.threshold_version == updates[-1]["version"]
        asked: list[str] = []

        def ask(model):
            asked.append(model)
            return model

        outcome = racer.complete(ask, Cascade(lambda a: a == decision.models[-1]), scope=scope,
                                 scores=scores_of(records, n), query_id="sync-1")  # fmt: skip
        assert outcome.decision == decision  # the same id: the same decision
        assert outcome.model == decision.models[-1]
        assert asked[: len(decision.models)] == decision.models  # the set first, in order
        assert sorted(asked) == sorted(records.models if decision.audit else decision.models)
        with pytest.raises(ConflictError, match="routed before with other scores"):
            racer.route(scope, scores=scores_of(records, n + 1), query_id="sync-1")
        with pytest.raises(UnprocessableEntityError) as unknown:
            racer.route("nope", scores=scores_of(records, 0))
        assert unknown.value.kind == "unknown_scope"


async def test_with_a_token_every_decision_request_needs_it(deployment, records, redis_url):
    deployment.write_scopes(records.models)
    deployment.start_worker(RACER_WEB_TOKEN="s3cret-token")
    await deployment.wait_answering()
    url = f"http://127.0.0.1:{deployment.web_ports[0]}"
    query = {"scope": deployment.scope, "scores": scores_of(records, 0)}
    async with httpx.AsyncClient(base_url=url) as http:
        for path in ("/v1/route", "/v1/feedback"):
            refused = await http.post(path, json=query)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert refused.headers["content-type"].startswith("application/problem+json")
    assert await stored_pending(redis_url, deployment.scope) == 0
    with pytest.raises(AuthenticationError):
        RacerClient(url, token="wrong").route(deployment.scope, scores=scores_of(records, 0))
    async with AsyncRacerClient(url, token="s3cret-token") as racer:
        decision = await racer.route(deployment.scope, scores=scores_of(records, 0))
        assert (await racer.scope(deployment.scope)).models == list(records.models)
    assert decision.scope == deployment.scope
    assert await stored_pending(redis_url, deployment.scope) == 1


async def test_feedback_through_the_api_joins_its_decision(deployment, worker, records, redis_url):
    scope = deployment.scope
    async with AsyncRacerClient(worker) as racer:
        for i in range(30):
            await racer.route(scope, scores=scores_of(records, i), query_id=f"fb-{i}")
        for i in range(30):
            await racer.feedback(f"fb-{i}", scope, labels_of(records, i))
    updates = await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] >= 30)
    assert updates[-1]["n"] == 30
    client = connect(redis_url)
    try:
        assert await client.xlen(keys.window(scope)) == 30
    finally:
        await client.aclose()
