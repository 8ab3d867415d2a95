"""Errors of the worker's HTTP server as RFC 9457 problem details (``application/problem+json``).

`problems` is an aiohttp middleware: any `web.HTTPException` of status 400 or more raised by
a handler or an inner middleware (a 401 from the token gate, aiohttp's own 404 and 405) and
any pydantic `ValidationError` (422, with the errors) become a problem document; anything
else is a 500 whose detail names nothing internal (the traceback goes to the log). Handlers
raise ``web.HTTPBadRequest(text="why")``: the text becomes the ``detail``; or `Problem`,
whose ``kind`` names the problem's ``type`` (``urn:racer-online:problem:unknown_scope``: the
dead-letter error class where the same message would be dead-lettered). Responses that a
handler returns are never rewritten (``/ready`` answers 503 with its own body on purpose).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import ValidationError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
PROBLEM_TYPE = "urn:racer-online:problem:"  # + the kind: unknown_scope, schema, json, ...
# Headers of the exception that describe its own plain-text body, not the problem's.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


class Problem(Exception):
    """An error answered as a problem document of type ``PROBLEM_TYPE + kind``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind = status, detail, kind
        self.headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}


def problem(
    status: int,
    *,
    detail: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    """A problem document: ``type`` is ``about:blank``, so ``title`` is the status phrase."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status}  # fmt: skip
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body |= extensions
    return web.Response(
        status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        kind = {"type": PROBLEM_TYPE + exc.kind} if exc.kind else {}
        return problem(exc.status, detail=exc.detail, instance=request.path,
                       headers=exc.headers, **kind)  # fmt: skip
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect is an answer, not a problem
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        default = f"{exc.status}: {exc.reason}"  # aiohttp's text when the raiser gave none
        detail = None if exc.text in (None, default) else exc.text
        return problem(exc.status, detail=detail, instance=request.path, headers=headers)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return problem(422, detail=f"{exc.error_count()} invalid field(s)",
                       instance=request.path, errors=errors)  # fmt: skip
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, detail="the server failed to answer; see its log",
                       instance=request.path)  # fmt: skip


def problem_schema() -> dict[str, Any]:
    """The problem document's JSON schema, for the OpenAPI document."""
    return {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "description": PROBLEM_TYPE + "<kind>, or about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "the dead-letter reason, if any"},
            "instance": {"type": "string"},
            "errors": {"type": "array", "description": "the invalid fields, on a 422"},
        },
    }
