"""The bearer-token gate of the worker's HTTP server: an aiohttp middleware.

A request passes with ``Authorization: Bearer <token>``, or, for a browser, with the session
cookie the dashboard's login form sets (`session_value`: an HMAC of the token, so the cookie
never holds the token itself and every replica with the same token accepts it). Both are
compared with `hmac.compare_digest`. Anything else gets a 401 with ``WWW-Authenticate:
Bearer`` (``error="invalid_token"`` when a token was sent and is wrong, RFC 6750), raised
for the `worker.http_problems.problems` middleware to answer as problem+json; a browser
asking for a page (``Accept: text/html``) is sent to the login form instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection

from aiohttp import web

from worker.http_problems import Handler, Middleware

SESSION_COOKIE = "racer_session"
_SESSION_LABEL = b"racer-online dashboard session v1"


def session_value(token: str) -> str:
    """The session cookie's value for ``token``: a rotated token ends every session."""
    return hmac.new(token.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_gate(
    token: str, *, open_paths: Collection[str], login_path: str | None = None
) -> Middleware:
    """The middleware: ``open_paths`` (the probes) pass without a token."""
    session = session_value(token)
    challenge = 'Bearer realm="racer-online"'

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths or request.path == login_path:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return await handler(request)
        if _same(request.cookies.get(SESSION_COOKIE, ""), session):
            return await handler(request)
        if (
            login_path
            and request.method == "GET"
            and "text/html" in request.headers.get("Accept", "")
        ):
            raise web.HTTPSeeOther(login_path)
        wrong = bool(scheme)  # a credential came and was refused
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": challenge + (', error="invalid_token"' if wrong else "")},
            text="a wrong bearer token"
            if wrong
            else "this endpoint needs a bearer token (Authorization: Bearer <RACER_WEB_TOKEN>)",
        )

    return gate
