"""The client's retry policy, error mapping, policies and graders, without a server: the
requests go to httpx's own MockTransport (the integration tier has the real worker)."""

import asyncio
import json

import httpx
import pytest

from racer_online.client import (
    APIConnectionError,
    AsyncRacerClient,
    AuthenticationError,
    Cascade,
    Cheapest,
    InternalServerError,
    RacerClient,
    UnprocessableEntityError,
    exact_match,
    numeric,
    regex,
)
from racer_online.client.policies import arun, audit_models, run
from racer_online.messages import DecisionMessage


def decision(models=("b", "a"), *, audit=False, abstain=False):
    return DecisionMessage(
        query_id="q1", scope="default", models=[] if abstain else list(models),
        abstain=abstain, flag_unanswerable=False, audit=audit, lam=0.3, threshold_version=4,
        threshold_status="certified", alpha=0.1, delta=0.1, bound="binomial",
        scores={"a": 0.9, "b": 0.8, "c": 0.1}, decided_at=1.0,
    )  # fmt: skip


def problem(status, detail, kind=None):
    body = {"type": f"urn:racer-online:problem:{kind}" if kind else "about:blank",
            "title": "t", "status": status, "detail": detail}  # fmt: skip
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def client_with(replies, **options):
    """A RacerClient whose requests get ``replies`` in order; the requests are kept."""
    seen = []

    def handler(request):
        seen.append(request)
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    http = httpx.Client(base_url="http://racer", transport=httpx.MockTransport(handler))
    return RacerClient(http_client=http, **options), seen


def test_a_route_request_carries_an_id_the_scope_and_the_token():
    racer, seen = client_with([httpx.Response(200, content=decision().model_dump_json())],
                              token="s3cret")  # fmt: skip
    got = racer.route("default", scores={"a": 0.9, "b": 0.8, "c": 0.1})
    body = json.loads(seen[0].content)
    assert got == decision() and seen[0].url.path == "/v1/route"
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert len(body["query_id"]) == 32 and body["scope"] == "default" and "text" not in body


def test_retries_keep_the_query_id_and_honour_retry_after(monkeypatch):
    waits = []
    monkeypatch.setattr("racer_online.client._clients.time.sleep", waits.append)
    busy = problem(503, "redis unavailable")
    busy.headers["retry-after"] = "1"
    ok = httpx.Response(200, content=decision().model_dump_json())
    racer, seen = client_with([busy, httpx.ConnectError("refused"), ok])
    racer.route(scores={"a": 1.0, "b": 1.0, "c": 1.0})
    ids = {json.loads(r.content)["query_id"] for r in seen}
    assert len(seen) == 3 and len(ids) == 1  # the same id: a retry gets the same decision
    assert waits[0] == 1.0 and 0.75 <= waits[1] <= 1.0  # Retry-After, then 1 s less jitter


@pytest.mark.parametrize(
    ("reply", "error", "tries"),
    [
        (problem(422, "unknown scope 'x'", "unknown_scope"), UnprocessableEntityError, 1),
        (problem(401, "a bearer token is required"), AuthenticationError, 1),
        (problem(503, "redis unavailable"), InternalServerError, 3),
        (httpx.ConnectError("refused"), APIConnectionError, 3),
    ],
)
def test_errors_map_to_one_class_each_and_only_transient_ones_are_retried(
    monkeypatch, reply, error, tries
):
    monkeypatch.setattr("racer_online.client._clients.time.sleep", lambda s: None)
    racer, seen = client_with([reply] * 3)
    with pytest.raises(error) as raised:
        racer.route(scores={"a": 1.0})
    assert len(seen) == tries
    if isinstance(reply, httpx.Response):
        assert raised.value.status == reply.status_code
        assert raised.value.detail == reply.json()["detail"]


def test_the_kind_of_a_problem_is_the_last_part_of_its_type():
    racer, _ = client_with([problem(422, "unknown scope 'x'", "unknown_scope")])
    with pytest.raises(UnprocessableEntityError) as raised:
        racer.route(scores={"a": 1.0})
    assert raised.value.kind == "unknown_scope" and "unknown scope 'x'" in str(raised.value)


def test_cheapest_calls_the_cheapest_model_of_the_set_only():
    called = []
    outcome = run(decision(), lambda m: called.append(m) or f"answer {m}",
                  Cheapest({"a": 0.1, "b": 0.5, "c": 0.01}))  # fmt: skip
    assert called == ["a"] and outcome.model == "a" and outcome.answer == "answer a"
    assert outcome.labels == {}  # no grader: nothing to send


def test_a_cascade_stops_at_the_first_accepted_answer_and_skips_failed_calls():
    def call(model):
        if model == "b":
            raise TimeoutError("model b timed out")
        return f"answer {model}"

    outcome = run(decision(("b", "a", "c")), call, Cascade(lambda a: a.endswith("a")))
    assert outcome.model == "a" and list(outcome.answers) == ["a"]
    assert isinstance(outcome.errors["b"], TimeoutError)


def test_an_audit_calls_every_model_set_first_and_grades_each():
    called = []
    outcome = run(decision(audit=True), lambda m: called.append(m) or ("391" if m != "c" else "?"),
                  Cheapest({"a": 0.1, "b": 0.5}), grader=numeric(391))  # fmt: skip
    assert called == audit_models(decision()) == ["b", "a", "c"]
    assert outcome.model == "a"
    assert outcome.labels == {"b": 1, "a": 1}  # "?" has no number: no label for c


def test_a_grader_that_fails_or_hangs_sends_no_label_for_its_model():
    import threading

    release = threading.Event()

    def grader(answer):
        if answer == "boom":
            raise ValueError("cannot grade")
        if answer == "slow":
            release.wait(5)
        return True

    answers = {"a": "fine", "b": "boom", "c": "slow"}
    outcome = run(decision(audit=True), answers.__getitem__, Cheapest({}), grader=grader,
                  grade_timeout_s=0.2)  # fmt: skip
    release.set()
    assert outcome.labels == {"a": 1}


def test_an_abstention_calls_no_model():
    outcome = run(decision(abstain=True), lambda m: pytest.fail("called"), Cheapest({}))
    assert outcome.model is None and outcome.answer is None


async def test_the_async_audit_calls_every_model_at_once():
    started, release = [], asyncio.Event()

    async def call(model):
        started.append(model)
        await release.wait()
        return model

    running = asyncio.ensure_future(arun(decision(audit=True), call, Cheapest({}),
                                         grader=exact_match("A")))  # fmt: skip
    while len(started) < 3:  # every call started before any answered
        await asyncio.sleep(0)
    release.set()
    outcome = await running
    assert outcome.labels == {"a": 1, "b": 0, "c": 0}


async def test_the_async_client_sends_the_labels_of_an_audit_as_feedback():
    seen = []

    def handler(request):
        seen.append((request.url.path, json.loads(request.content)))
        if request.url.path == "/v1/route":
            return httpx.Response(200, content=decision(audit=True).model_dump_json())
        return httpx.Response(202, json={"accepted": True})

    http = httpx.AsyncClient(base_url="http://racer", transport=httpx.MockTransport(handler))
    async with AsyncRacerClient(http_client=http) as racer:

        async def call(model):
            return {"a": "Paris", "b": "paris.", "c": "Lyon"}[model]

        outcome = await racer.complete(call, Cheapest({"a": 1.0, "b": 2.0}), text="Capital?",
                                       grader=regex(r"(?i)^paris"))  # fmt: skip
    assert outcome.model == "a"
    assert seen[1] == ("/v1/feedback", {"query_id": "q1", "scope": "default",
                                        "labels": {"b": 1, "a": 1, "c": 0}})  # fmt: skip


@pytest.mark.parametrize(
    ("grader", "answer", "label"),
    [
        (exact_match("391"), " 391\n", True),
        (exact_match("Paris"), "paris", True),
        (exact_match("Paris", case_sensitive=True), "paris", False),
        (numeric(391), "17 * 23 = 391", True),
        (numeric(0.5, tol=0.01), "about 0.505", True),
        (numeric(391), "1,391", False),
        (numeric(391), "no idea", None),
        (regex(r"\bdef \w+\("), "def f(x):\n    return x", True),
    ],
)
def test_graders(grader, answer, label):
    assert grader(answer) is label
