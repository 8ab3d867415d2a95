"""`RacerClient` and `AsyncRacerClient`: the decision API over httpx, twins that share
request building, the retry policy and the error mapping (`_BaseClient`).

Every request carries a query id (generated here when the caller gives none), so a retried
``route`` gets the decision Redis holds for it, never a second one; a retried label is
idempotent too. Retried: connection errors, timeouts, 408, 429 and 5xx (503: Redis or the
broker unavailable), up to ``max_retries`` times, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from racer_online.client.errors import APIConnectionError, APITimeoutError, status_error
from racer_online.client.graders import Grader
from racer_online.client.policies import AsyncCall, Call, Outcome, Policy, arun, run
from racer_online.messages import DecisionMessage

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_S, MAX_RETRY_S = 0.5, 8.0
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class ScopeInfo(BaseModel):
    """``GET /v1/scopes/{scope}``: the models a gateway maps to its deployments."""

    scope: str
    models: list[str]
    prices: dict[str, float]
    alpha: float
    delta: float
    bound: str


class _BaseClient(Generic[HttpT]):
    def __init__(
        self,
        http: HttpT,
        *,
        token: str | None,
        max_retries: int,
    ) -> None:
        self._http: HttpT = http
        self.max_retries = max_retries
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def _query(
        scope: str,
        *,
        text: str | None,
        scores: Mapping[str, float] | None,
        embedding: Sequence[float] | None,
        query_id: str | None,
        p_abstain: float | None,
    ) -> dict[str, Any]:
        given = {"text": text, "scores": dict(scores) if scores is not None else None,
                 "embedding": list(embedding) if embedding is not None else None}  # fmt: skip
        body: dict[str, Any] = {"query_id": query_id or uuid.uuid4().hex, "scope": scope}
        body |= {k: v for k, v in given.items() if v is not None}
        if p_abstain is not None:
            body["p_abstain"] = p_abstain
        return body

    @staticmethod
    def _feedback(
        query_id: str, scope: str, labels: Mapping[str, int | bool], grader: str | None
    ) -> dict[str, Any]:
        body = {"query_id": query_id, "scope": scope,
                "labels": {m: int(bool(v)) for m, v in labels.items()}}  # fmt: skip
        return body | ({"grader": grader} if grader else {})

    def _retry_after(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: give up."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRIED_STATUSES:
                return None
            header = response.headers.get("retry-after", "")
            if header.replace(".", "", 1).isdigit() and float(header) <= 60:
                return float(header)
        delay = min(INITIAL_RETRY_S * 2.0**attempt, MAX_RETRY_S)
        return delay * (1 - 0.25 * random.random())  # jitter: retries of many callers spread

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason_phrase, "detail": response.text[:500]}
            raise status_error(response.status_code, problem)
        return response


def _connection_error(exc: httpx.TransportError) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class RacerClient(_BaseClient[httpx.Client]):
    """The decision API, blocking: ``route``, ``feedback``, and ``complete`` (route, call
    by policy, audit, grade, send the labels)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:6066",
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        http = http_client or httpx.Client(base_url=base_url, timeout=timeout)
        super().__init__(http, token=token, max_retries=max_retries)

    def __enter__(self) -> RacerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str) -> httpx.Response:
        return self._request("GET", path, None)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                delay = self._retry_after(attempt, None)
                if delay is None:
                    raise _connection_error(exc) from None
            else:
                delay = self._retry_after(attempt, response) if response.is_error else None
                if delay is None:
                    return self._checked(response)
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def scope(self, name: str = "default") -> ScopeInfo:
        """A scope's models, their prices and its guarantee."""
        return ScopeInfo.model_validate_json(self._get(f"/v1/scopes/{name}").content)

    def route(
        self,
        scope: str = "default",
        *,
        text: str | None = None,
        scores: Mapping[str, float] | None = None,
        embedding: Sequence[float] | None = None,
        query_id: str | None = None,
        p_abstain: float | None = None,
    ) -> DecisionMessage:
        body = self._query(scope, text=text, scores=scores, embedding=embedding,
                           query_id=query_id, p_abstain=p_abstain)  # fmt: skip
        return DecisionMessage.model_validate_json(self._post("/v1/route", body).content)

    def feedback(
        self, query_id: str, scope: str, labels: Mapping[str, int | bool], *,
        grader: str | None = None,
    ) -> None:  # fmt: skip
        self._post("/v1/feedback", self._feedback(query_id, scope, labels, grader))

    def complete(
        self,
        call: Call,
        policy: Policy,
        *,
        scope: str = "default",
        text: str | None = None,
        scores: Mapping[str, float] | None = None,
        query_id: str | None = None,
        grader: Grader | None = None,
        grade_timeout_s: float = 30.0,
    ) -> Outcome:
        """Route the query, call its models by ``policy`` (every model on an audit) and send
        the grader's labels as feedback."""
        decision = self.route(scope, text=text, scores=scores, query_id=query_id)
        outcome = run(decision, call, policy, grader=grader, grade_timeout_s=grade_timeout_s)
        if outcome.labels:
            self.feedback(decision.query_id, decision.scope, outcome.labels)
        return outcome


class AsyncRacerClient(_BaseClient[httpx.AsyncClient]):
    """The async twin of `RacerClient`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:6066",
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        http = http_client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        super().__init__(http, token=token, max_retries=max_retries)

    async def __aenter__(self) -> AsyncRacerClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> httpx.Response:
        return await self._request("GET", path, None)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                delay = self._retry_after(attempt, None)
                if delay is None:
                    raise _connection_error(exc) from None
            else:
                delay = self._retry_after(attempt, response) if response.is_error else None
                if delay is None:
                    return self._checked(response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def scope(self, name: str = "default") -> ScopeInfo:
        """A scope's models, their prices and its guarantee."""
        return ScopeInfo.model_validate_json((await self._get(f"/v1/scopes/{name}")).content)

    async def route(
        self,
        scope: str = "default",
        *,
        text: str | None = None,
        scores: Mapping[str, float] | None = None,
        embedding: Sequence[float] | None = None,
        query_id: str | None = None,
        p_abstain: float | None = None,
    ) -> DecisionMessage:
        body = self._query(scope, text=text, scores=scores, embedding=embedding,
                           query_id=query_id, p_abstain=p_abstain)  # fmt: skip
        response = await self._post("/v1/route", body)
        return DecisionMessage.model_validate_json(response.content)

    async def feedback(
        self, query_id: str, scope: str, labels: Mapping[str, int | bool], *,
        grader: str | None = None,
    ) -> None:  # fmt: skip
        await self._post("/v1/feedback", self._feedback(query_id, scope, labels, grader))

    async def complete(
        self,
        call: AsyncCall,
        policy: Policy,
        *,
        scope: str = "default",
        text: str | None = None,
        scores: Mapping[str, float] | None = None,
        query_id: str | None = None,
        grader: Grader | None = None,
        grade_timeout_s: float = 30.0,
    ) -> Outcome:
        """The async twin of `RacerClient.complete`; an audit calls every model at once."""
        decision = await self.route(scope, text=text, scores=scores, query_id=query_id)
        outcome = await arun(decision, call, policy, grader=grader,
                             grade_timeout_s=grade_timeout_s)  # fmt: skip
        if outcome.labels:
            await self.feedback(decision.query_id, decision.scope, outcome.labels)
        return outcome
