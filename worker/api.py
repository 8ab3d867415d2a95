"""The decision API on the worker's web server: a gateway asks for a decision synchronously.

``POST /v1/route`` takes a query in the topic's schema (``query_id`` optional) and answers
with the decision exactly as the decisions topic carries it, once Redis holds its pending
record (so feedback joins and a repeated id gets the first decision again) and the broker
acknowledged it on the decisions topic. Concurrent requests are coalesced into one
`RacerService.route` call (`MicroBatcher`), so they share a Redis round trip as a fetch's
records do. ``POST /v1/feedback`` publishes labels on the feedback topic and answers 202
once the broker acknowledged them; the feedback consumer joins them as any other.

Errors are RFC 9457 problem details (`worker.http_problems`) whose ``detail`` is the reason a
dead letter of the same message would carry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiokafka.errors import KafkaError

from racer_online.errors import StoreUnavailableError
from racer_online.messages import DecisionMessage, FeedbackMessage, MessageError, QueryMessage
from racer_online.messages.fields import MAX_MESSAGE_BYTES
from racer_online.scopes import ScopeConfig
from racer_online.service import Rejected, Routed
from racer_online.service.coalescing import MicroBatcher
from worker.http_problems import Problem, problem_schema

M = TypeVar("M", QueryMessage, FeedbackMessage)
RouteBatch = Callable[[Sequence[QueryMessage]], Awaitable[Sequence[Routed | Rejected]]]
SendFeedback = Callable[[Sequence[FeedbackMessage]], Awaitable[None]]

# Rejections a caller can fix by changing the request, and the one it cannot: an id that
# was routed before with other scores keeps its first decision.
CONFLICTS = frozenset({"reused_query_id"})


class DecisionAPI:
    """The handlers, on a route-batch function (the worker's: store, then publish) and a
    feedback sender."""

    def __init__(
        self,
        route_batch: RouteBatch,
        send_feedback: SendFeedback,
        *,
        scopes: Mapping[str, ScopeConfig],
        max_wait_s: float,
        max_batch: int,
        max_body_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.scopes = scopes
        self.routing = MicroBatcher(route_batch, max_wait_s=max_wait_s, max_size=max_batch)
        self.send_feedback = send_feedback
        self.max_body_bytes = max_body_bytes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/route", self.route)
        router.add_post("/v1/feedback", self.feedback)
        router.add_get("/v1/scopes/{scope}", self.scope)
        router.add_get("/v1/openapi.json", self.openapi)

    async def route(self, request: web.Request) -> web.StreamResponse:
        query = await self._read(request, QueryMessage, generate_id=True)
        try:
            result = await self.routing.submit(query)
        except StoreUnavailableError as exc:
            raise Problem(503, str(exc), retry_after_s=1) from None
        except KafkaError as exc:
            raise Problem(503, _broker_failed(exc), retry_after_s=1) from None
        if isinstance(result, Rejected):
            status = 409 if result.kind in CONFLICTS else 422
            raise Problem(status, result.reason, kind=result.kind)
        return web.Response(body=result.raw, content_type="application/json")

    async def feedback(self, request: web.Request) -> web.StreamResponse:
        event = await self._read(request, FeedbackMessage, generate_id=False)
        if event.scope not in self.scopes:  # labels no worker here could ever join
            raise Problem(422, f"unknown scope {event.scope!r}", kind="unknown_scope")
        try:
            await self.send_feedback([event])
        except KafkaError as exc:
            raise Problem(503, _broker_failed(exc), retry_after_s=1) from None
        return web.json_response({"query_id": event.query_id, "accepted": True}, status=202)

    async def scope(self, request: web.Request) -> web.StreamResponse:
        """A scope's catalogue (the models a gateway maps to its deployments, their prices)
        and its guarantee."""
        name = request.match_info["scope"]
        found = self.scopes.get(name)
        if found is None:
            raise Problem(404, f"unknown scope {name!r}", kind="unknown_scope")
        return web.json_response({
            "scope": name, "models": list(found.model_names),
            "prices": dict(zip(found.model_names, found.prices, strict=True)),
            "alpha": found.alpha, "delta": found.delta, "bound": found.bound,
        })  # fmt: skip

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(openapi_document())

    async def _read(self, request: web.Request, model: type[M], *, generate_id: bool) -> M:
        """The body as ``model``; a problem (413, 415, 422) naming what is wrong otherwise."""
        if request.content_type != "application/json":
            raise Problem(415, "send the body as application/json")
        if (request.content_length or 0) > self.max_body_bytes:
            raise Problem(413, self._too_large(request.content_length))
        body = await request.content.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:  # chunked, without a length
            raise Problem(413, self._too_large(None))
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Problem(422, "the body is not JSON", kind="json") from None
        if not isinstance(fields, dict):
            raise Problem(422, "the body is not a JSON object", kind="json")
        if generate_id and "query_id" not in fields:
            fields["query_id"] = uuid.uuid4().hex
        try:
            return model.parse(json.dumps(fields))
        except MessageError as exc:
            raise Problem(422, exc.reason, kind="schema") from None

    def _too_large(self, size: int | None) -> str:
        given = f"{size} bytes" if size is not None else "more"
        return f"too large: {given} > {self.max_body_bytes}"


def _broker_failed(exc: KafkaError) -> str:
    return f"the broker did not acknowledge the message: {type(exc).__name__} {exc}".strip()


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the decision API, from the message models (the one schema source)."""
    schemas: dict[str, Any] = {}
    for model in (QueryMessage, FeedbackMessage, DecisionMessage):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    query = schemas["QueryMessage"]
    query["required"] = [f for f in query.get("required", []) if f != "query_id"]
    query["properties"]["query_id"]["description"] = (
        "Generated when absent; give one so that a retried request gets the same decision."
    )
    schemas["Problem"] = problem_schema()

    def problems(*statuses: int) -> dict[str, Any]:
        ref = {"$ref": "#/components/schemas/Problem"}
        return {str(s): {"description": "a problem (RFC 9457)",
                         "content": {"application/problem+json": {"schema": ref}}}
                for s in statuses}  # fmt: skip

    def body(name: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{name}"}
        return {"required": True, "content": {"application/json": {"schema": ref}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "racer-online decision API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/route": {"post": {
                "summary": "The decision for one query, stored and published",
                "requestBody": body("QueryMessage"),
                "responses": {"200": {"description": "the decision, as the decisions topic "
                                      "carries it", "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/"
                                                     "DecisionMessage"}}}},
                              **problems(401, 409, 413, 415, 422, 503)},
            }},
            "/v1/scopes/{scope}": {"get": {
                "summary": "A scope's models, their prices and its guarantee",
                "parameters": [{"name": "scope", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the scope"}, **problems(401, 404)},
            }},
            "/v1/feedback": {"post": {
                "summary": "Labels for a routed query, joined like the feedback topic's",
                "requestBody": body("FeedbackMessage"),
                "responses": {"202": {"description": "acknowledged by the broker"},
                              **problems(401, 413, 415, 422, 503)},
            }},
        },
    }  # fmt: skip
