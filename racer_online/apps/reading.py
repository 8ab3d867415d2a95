"""Read-only access to the stored thresholds and history, for the CLI, monitor and report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from racer_online.errors import InvalidInputError
from racer_online.messages import ThresholdMessage
from racer_online.routers.base import Router
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore


@asynccontextmanager
async def reading_service(
    settings: Settings, *, router: Router | None = None
) -> AsyncIterator[RacerService]:
    """A service on the configured Redis that only reads (CLI, monitor, report); ``router``
    scores text queries for `RacerService.decide`."""
    store = RedisStore.from_settings(settings, store_config(settings))
    try:
        service = RacerService(settings, store, router=router)
        await service.refresh_thresholds(as_stored=True)  # the identity column says whose
        yield service
    finally:
        await store.close()


async def load_current_thresholds(
    settings: Settings, scopes: Sequence[str]
) -> dict[str, ThresholdMessage]:
    """The stored threshold of each scope, or its start state when none is stored yet."""
    unknown = [name for name in scopes if name not in settings.scopes]
    if unknown:
        raise InvalidInputError(f"unknown scope {unknown[0]!r}")
    async with reading_service(settings) as service:
        return {name: service.scopes[name].threshold for name in scopes}


async def load_history(
    settings: Settings, scopes: Sequence[str], *, since: float = 0.0
) -> dict[str, dict[str, list[Any]]]:
    """Threshold history and alerts of each scope since a time."""
    async with reading_service(settings) as service:
        return {name: await service.history(name, since=since) for name in scopes}
