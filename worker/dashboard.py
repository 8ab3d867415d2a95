"""``GET /dashboard``: the drift charts, drawn in the browser from ``/api/history``; and,
when a token guards the server, ``/login``: a form that takes the token once and sets the
session cookie the token gate accepts (worker/http_auth.py), so no token sits in a URL."""

from __future__ import annotations

import hmac
from typing import Any

import faust
from aiohttp import web as aiohttp_web

from racer_online.dashboard import live_page, login_page
from racer_online.service import RacerService
from racer_online.settings import Settings
from worker.http_auth import SESSION_COOKIE, session_value
from worker.security import LOGIN_PATH, web_token

SESSION_MAX_AGE_S = 12 * 3600


def register(app: faust.App, settings: Settings, service: RacerService) -> None:
    page = live_page(list(service.scopes))  # the scopes are fixed for the worker's life
    token = web_token(settings)
    secure = settings.web_tls_cert_file is not None  # the cookie travels over HTTPS only

    @app.page("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        """The page itself; its script polls ``api/history`` every few seconds."""
        return web.html(page, headers={"Cache-Control": "no-store"})

    @app.page(LOGIN_PATH)
    class Login(faust.web.View):
        """The form (GET) and the token it posts (POST, form-encoded, never in the URL)."""

        async def get(self, request: Any) -> Any:
            if token is None:  # nothing to log in to
                raise aiohttp_web.HTTPSeeOther("/dashboard")
            refused = request.query.get("refused") == "1"
            return self.html(login_page(refused=refused), headers={"Cache-Control": "no-store"})

        async def post(self, request: Any) -> Any:
            if token is None:
                raise aiohttp_web.HTTPSeeOther("/dashboard")
            given = str((await request.post()).get("token", "")).strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise aiohttp_web.HTTPSeeOther(f"{LOGIN_PATH}?refused=1")
            answer = aiohttp_web.HTTPSeeOther("/dashboard")
            answer.set_cookie(
                SESSION_COOKIE, session_value(token), max_age=SESSION_MAX_AGE_S, path="/",
                httponly=True, samesite="Strict", secure=secure,
            )  # fmt: skip
            raise answer
