"""Commands of the stream: the worker, publishing queries and feedback, local services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from racer_online.apps.cli.common import app, note, plural
from racer_online.errors import ConfigError, InvalidInputError, RacerError, StoreUnavailableError
from racer_online.settings import Settings

if TYPE_CHECKING:
    from racer_online.kafka.publishing import Located

REDIS_START_TIMEOUT_S = 10.0  # as for the broker: a worker that cannot reach it does not start


@app.command()
def worker() -> None:
    """Run the stream worker with the RACER_* settings (Ctrl-C stops it cleanly)."""
    from worker.app import run
    from worker.startup_checks import check_broker, check_web_port

    settings = Settings.load()  # a bad setting or scopes file fails here, as one line
    check_web_port(settings)  # a taken web port fails here, as one line
    asyncio.run(check_redis(settings))  # unreachable, evicting, another audit key: one line
    check_broker(settings)  # and a broker that does not answer
    note(start_line(settings))
    run(settings)


def start_line(settings: Settings) -> str:
    """What this worker serves, on one line: scopes and their models, router, broker, Redis
    (its password masked) and the dashboard."""
    scopes = "; ".join(
        f"{name} ({len(c.model_names)} models: {', '.join(c.model_names)})"
        for name, c in settings.scopes.items()
    )
    router = str(settings.router_file) if settings.router_file else "none (queries carry scores)"
    web = settings.web_enabled
    dashboard = f"http://{settings.web_host}:{settings.web_port}/dashboard" if web else "off"
    redis = masked(settings.redis_url)
    return (f"racer-online worker: scopes {scopes}; router {router}; broker "
            f"{settings.kafka_broker}; redis {redis}; dashboard {dashboard}")  # fmt: skip


def masked(url: str) -> str:
    """The URL with its password (if any) as ****."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))


async def check_redis(settings: Settings) -> None:
    from racer_online.service import store_config
    from racer_online.store import keys
    from racer_online.store.connection import shown_url
    from racer_online.store.redis import RedisStore
    from racer_online.store.startup_checks import (
        refuse_another_audit_key,
        refuse_evicting_redis,
        scopes_on_the_old_layout,
    )

    store = RedisStore.from_settings(settings, store_config(settings))
    try:
        await asyncio.wait_for(refuse_evicting_redis(store), REDIS_START_TIMEOUT_S)
        await refuse_another_audit_key(store, settings)
        for scope in await scopes_on_the_old_layout(store):
            note(f"racer-online: warning: scope {scope!r} has pending records of the old "
                 f"layout: they are ignored and expire within RACER_PENDING_TTL_S; then "
                 f"delete {keys.legacy_audits(scope)}")  # fmt: skip
    except (StoreUnavailableError, TimeoutError) as exc:
        # A worker that cannot reach Redis at start would join the group and take partitions
        # from a healthy worker only to pause them: it stops here instead. An outage once
        # it runs is ridden out (docs/reliability.md).
        raise ConfigError(
            f"cannot reach Redis at {shown_url(settings.redis_url)} (RACER_REDIS_URL) within "
            f"{REDIS_START_TIMEOUT_S:g} s: {_reason(exc)}"
        ) from None
    finally:
        await store.close()


def _reason(exc: BaseException) -> str:
    from redis.exceptions import AuthenticationError

    cause = exc.__cause__ or exc  # redis-py's own error says what was refused
    said = " ".join(str(cause).split()) or type(cause).__name__
    if isinstance(cause, AuthenticationError):  # NOAUTH, a wrong password or user
        return f"authentication refused (RACER_REDIS_USERNAME, RACER_REDIS_PASSWORD): {said}"
    return said


ForceOpt = Annotated[
    bool, typer.Option("--force", help="Send messages the scopes would reject (to the DLQ).")
]


@app.command()
def publish(
    source: Annotated[str, typer.Argument(help="Queries as JSONL, a records CSV, or - (stdin).")],
    force: ForceOpt = False,
) -> None:
    """Publish queries to the queries topic, once the whole file is checked."""
    from racer_online.kafka.publishing import read_queries

    _send(source, read_queries(source), "query", "queries", force=force)


@app.command()
def feedback(
    source: Annotated[str, typer.Argument(help="Labels as JSONL, a records CSV, or - (stdin).")],
    force: ForceOpt = False,
) -> None:
    """Publish correctness feedback to the feedback topic, once the whole file is checked."""
    from racer_online.kafka.publishing import read_feedback

    _send(source, read_feedback(source), "feedback event", "feedback", force=force)


def _send(source: str, located: list[Located], noun: str, topic: str, *, force: bool) -> None:
    """Check every message against the scopes (unless forced), then send them all; a file
    without a message is an error (a wrong file, or one not written yet)."""
    from racer_online.kafka.publishing import check_against_scopes, produce

    if not located:
        where = "stdin" if source == "-" else source
        raise InvalidInputError(f"{where}: no {noun} in it; nothing sent")
    settings = Settings.load()
    if not force:
        check_against_scopes(located, settings.scopes)
    # The client logs each failed connection; the command reports the failure as one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    name = getattr(settings.topics, topic)
    sent = asyncio.run(produce(settings, name, [m for _, m in located]))
    note(f"published {plural(sent, noun)} to {name}")


# A first start on a fresh broker needs a start for its new consumer groups: dev services
# hold nothing worth skipping, so their groups read from the start (production says so itself).
DEV_OFFSET_RESET = {"RACER_OFFSET_RESET": "earliest"}


@app.command("dev-services")
def dev_services(
    broker: Annotated[
        str, typer.Option(help="tansu (embedded, no Java) or apache (Apache Kafka, Java 17).")
    ] = "tansu",
    secured: Annotated[
        bool,
        typer.Option(
            "--secured",
            help="Apache Kafka over SASL_SSL (SCRAM-SHA-512) and "
            "Redis over TLS with an ACL user, certificates made now.",
        ),
    ] = False,
    env: Annotated[
        bool,
        typer.Option(
            "--env",
            help='Start them in the background and print export lines: eval "$(racer-online '
            'dev-services --env)"; kill $RACER_DEV_SERVICES_PID stops them.',
        ),
    ] = False,
) -> None:
    """Start a local broker and Redis; print the RACER_* lines a client needs; run until
    stopped (Ctrl-C), or with --env in the background."""
    from racer_online.local.brokers import BROKERS
    from racer_online.local.secured import secured_services
    from racer_online.local.services import embedded_services

    if broker not in BROKERS:
        raise typer.BadParameter(f"{broker!r}: one of {', '.join(BROKERS)}", param_hint="--broker")
    if env:
        _dev_services_in_background(broker)
        return
    with (
        contextlib.suppress(KeyboardInterrupt),  # Ctrl-C is how they stop: exit 0
        secured_services()
        if secured
        else embedded_services(_configured_redis(), broker=broker) as services,
    ):
        lines = services if isinstance(services, dict) else services.env()
        for name, value in (lines | DEV_OFFSET_RESET).items():
            print(f"{name}={value}", flush=True)
        note("dev services are up; Ctrl-C stops them")
        threading.Event().wait()


def _dev_services_in_background(broker: str) -> None:
    """Run ``dev-services`` as a process of its own session (it outlives this one and the
    shell's command substitution), wait for its lines, print them as ``export`` lines."""
    import shlex
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    log = Path(tempfile.mkdtemp(prefix="racer-dev-services-")) / "dev-services.log"
    with open(log, "wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "racer_online", "dev-services", "--broker", broker],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
            start_new_session=True, text=True,
        )  # fmt: skip
    assert child.stdout is not None
    lines: dict[str, str] = {}
    while "RACER_OFFSET_RESET" not in lines:  # the last line it prints
        line = child.stdout.readline()
        if not line:
            tail = " | ".join(log.read_text(errors="replace").splitlines()[-2:])
            raise RacerError(f"the dev services did not start: {tail or 'no output'}")
        name, _, value = line.strip().partition("=")
        lines[name] = value
    child.stdout.close()  # it prints nothing more
    for name, value in lines.items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"export RACER_DEV_SERVICES_PID={child.pid}")
    note(f"dev services are up in the background (pid {child.pid}, log {log}); "
         "stop them: kill $RACER_DEV_SERVICES_PID")  # fmt: skip


def _configured_redis() -> str | None:
    """``RACER_REDIS_URL`` when the environment sets it (the embedded services use it)."""
    settings = Settings.load()
    return settings.redis_url if "redis_url" in settings.model_fields_set else None
