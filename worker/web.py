"""The worker's HTTP views: probes, Prometheus metrics and the history behind the charts.

Who may call them (the token gate), HTTPS and the error documents: worker/security.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust
from aiohttp import web as aiohttp_web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from racer_online.errors import InvalidInputError, StoreUnavailableError
from racer_online.kafka.batches import BatchConsumer
from racer_online.service import RacerService
from racer_online.settings import Settings
from worker import dashboard


def register(
    app: faust.App, settings: Settings, service: RacerService, consumers: Sequence[BatchConsumer]
) -> None:
    async def refresh_lag() -> None:
        """racer_consumer_lag on the worker's own schedule: a scrape never asks the broker
        (each refresh sends offset requests; scrapers, however many, send none)."""
        for consumer in consumers:
            await consumer.lag()

    app.timer(settings.lag_refresh_s)(refresh_lag)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        """Liveness: the event loop answers."""
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """Readiness: consuming, Redis reachable, every scope's certified threshold fresh; and
        the facts a caller may wait on: the partitions each input topic's consumer owns and
        whether this worker is the leader."""
        fresh = service.fresh_thresholds()
        checks = {
            "consuming": bool(app.started and all(c.consuming for c in consumers)),
            "redis": await service.store.ping(),
            "thresholds_fresh": all(fresh.values()),
        }
        body = {"ready": all(checks.values()), **checks, "scopes": fresh,
                "assignment": {c.topic: sorted(tp.partition for tp in c.assignment)
                               for c in consumers},
                "leader": app.is_leader()}  # fmt: skip
        return web.json(body, status=200 if body["ready"] else 503)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        """The registry as it is: the lag is the last refresh's (`refresh_lag`)."""
        # aiohttp sets the charset itself and refuses one inside content_type.
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/api/history")
    async def history(web: Any, request: Any) -> Any:
        """Thresholds and alerts of one scope (``?scope=``, ``&since=`` unix seconds)."""
        scope = request.query.get("scope") or next(iter(service.scopes))
        try:
            since = float(request.query.get("since", 0))
            found = await service.history(scope, since=since)
        except (InvalidInputError, ValueError) as exc:
            raise aiohttp_web.HTTPBadRequest(text=str(exc)) from None
        except StoreUnavailableError as exc:
            raise aiohttp_web.HTTPServiceUnavailable(text=str(exc)) from None
        return web.json({
            "scope": scope,
            "scopes": list(service.scopes),
            "thresholds": [t.model_dump() for t in found["thresholds"]],
            "alerts": [a.model_dump() for a in found["alerts"]],
        })  # fmt: skip

    dashboard.register(app, settings, service)
