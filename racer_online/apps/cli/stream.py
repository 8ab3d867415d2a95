"""Commands of the stream: the worker, publishing queries and feedback, local services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Annotated

import typer

from racer_online.apps.cli.common import (
    app,
    note,
)
from racer_online.errors import StoreUnavailableError
from racer_online.settings import Settings


@app.command()
def worker() -> None:
    """Run the stream worker with the RACER_* settings (Ctrl-C stops it cleanly)."""
    settings = Settings.load()
    settings.scopes  # noqa: B018  # a bad scopes file fails here, as one line
    asyncio.run(check_redis(settings))  # an evicting Redis fails here, as one line
    import faust

    from worker.app import create_app

    # redirect_stdouts=False: print() stays print(), not a WARNING log line.
    worker_process = faust.Worker(
        create_app(settings), loglevel=settings.log_level.lower(), redirect_stdouts=False
    )
    worker_process.execute_from_commandline()


async def check_redis(settings: Settings) -> None:
    from racer_online.service import store_config
    from racer_online.store.redis import RedisStore, refuse_evicting_redis

    store = RedisStore.from_settings(settings, store_config(settings))
    try:
        await refuse_evicting_redis(store)
    except StoreUnavailableError as exc:  # the worker rides out an outage: start anyway
        note(f"racer-online: warning: cannot check Redis now ({exc})")
    finally:
        await store.close()


@app.command()
def publish(
    source: Annotated[str, typer.Argument(help="Queries as JSONL, a records CSV, or - (stdin).")],
) -> None:
    """Publish queries to the queries topic."""
    from racer_online.kafka.publishing import produce, read_queries

    settings = Settings.load()
    sent = asyncio.run(produce(settings, settings.topics.queries, read_queries(source)))
    note(f"published {sent} queries to {settings.topics.queries}")


@app.command()
def feedback(
    source: Annotated[str, typer.Argument(help="Labels as JSONL, a records CSV, or - (stdin).")],
) -> None:
    """Publish correctness feedback to the feedback topic."""
    from racer_online.kafka.publishing import produce, read_feedback

    settings = Settings.load()
    sent = asyncio.run(produce(settings, settings.topics.feedback, read_feedback(source)))
    note(f"published {sent} feedback events to {settings.topics.feedback}")


@app.command("dev-services")
def dev_services() -> None:
    """Start a local broker and Redis; print RACER_* lines to source; run until stopped."""
    from racer_online.local.services import embedded_services

    with (
        contextlib.suppress(KeyboardInterrupt),  # Ctrl-C is how they stop: exit 0
        embedded_services(os.environ.get("RACER_REDIS_URL")) as services,
    ):
        for name, value in services.env().items():
            print(f"{name}={value}", flush=True)
        note("dev services are up; Ctrl-C stops them")
        threading.Event().wait()
