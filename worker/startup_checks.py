"""What a worker checks before it starts, each failure one `ConfigError` line from the
command instead of Faust's traceback: the web port and its exposure, the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from aiokafka.errors import KafkaConnectionError, KafkaError

from racer_online.errors import ConfigError
from racer_online.kafka import clients
from racer_online.settings import Settings
from worker.security import check_web_exposure


def check_web_port(settings: Settings) -> None:
    """A web port that is taken, or open beyond loopback without a token, is a `ConfigError`
    before anything starts: one line from the command, not Faust's traceback."""
    check_web_exposure(settings)  # beyond loopback without a token: refused first
    if settings.web_enabled:
        _check_bindable(settings.web_host, settings.web_port)


def check_broker(settings: Settings) -> None:
    """A broker that does not answer is a `ConfigError` before anything starts."""
    asyncio.run(_check_broker(settings))


def _check_bindable(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"the web server cannot listen on {host}:{port} (RACER_WEB_HOST, "
                f"RACER_WEB_PORT): {exc.strerror or exc}"
            ) from None


async def _check_broker(settings: Settings, *, timeout_s: float = 10.0) -> None:
    """One metadata request through the configured client, security included."""
    admin = clients.admin(settings, request_timeout_ms=int(timeout_s * 1000))
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # the error below says it, in one line
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        unreachable = isinstance(exc, KafkaConnectionError | OSError | TimeoutError)
        refused = await clients.refusal(settings, timeout_s=timeout_s) if unreachable else None
        if refused is not None:  # it answers, and says no: which credential, which CA
            raise ConfigError(
                f"the broker at {settings.kafka_broker} refused us: {refused}"
            ) from None
        reason = "" if unreachable else f": {exc}"
        raise ConfigError(
            f"the broker at {settings.kafka_broker} does not answer (RACER_KAFKA_BROKER){reason}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        client_log.setLevel(level)
