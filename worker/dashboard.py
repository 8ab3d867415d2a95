"""``GET /dashboard``: the drift charts, drawn in the browser from ``/api/history``."""

from __future__ import annotations

from typing import Any

import faust

from racer_online.dashboard import live_page
from racer_online.service import RacerService


def register(app: faust.App, service: RacerService) -> None:
    page = live_page(list(service.scopes))  # the scopes are fixed for the worker's life

    @app.page("/dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        """The page itself; its script polls ``api/history`` every few seconds."""
        return web.html(page, headers={"Cache-Control": "no-store"})
