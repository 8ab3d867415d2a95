"""RFC 9457 problem details for every error of the worker's web server.

A handler raises `Problem`; `problem_middleware` answers it, and any aiohttp HTTP error
(404, 405, a body over the server's limit), as ``application/problem+json`` with ``type``,
``title``, ``status``, ``detail`` and ``instance``. A 401 carries ``WWW-Authenticate``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "urn:racer-online:problem:"  # + the kind: unknown_scope, schema, ...
CONTENT_TYPE = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An error answered as problem+json; ``kind`` names it in ``type`` (the dead-letter
    error class where the same message would be dead-lettered)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind
        self.headers = dict(headers or {})
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)

    def response(self, instance: str) -> web.Response:
        body = {
            "type": PROBLEM_TYPE + self.kind if self.kind else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        return web.json_response(body, status=self.status, content_type=CONTENT_TYPE,
                                 headers=self.headers)  # fmt: skip


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text or exc.reason
        if detail.startswith(f"{exc.status}: "):  # aiohttp's own text repeats the status
            detail = detail.split(": ", 1)[1]
        return Problem(exc.status, exc.reason, detail).response(request.path)


def problem_schema() -> dict[str, Any]:
    """The problem body's JSON schema, for the OpenAPI document."""
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": PROBLEM_TYPE + "<kind> or about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "the dead-letter reason, if any"},
            "instance": {"type": "string"},
        },
    }
