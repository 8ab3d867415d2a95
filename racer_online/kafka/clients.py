"""Kafka clients from settings: credentials as aiokafka takes them, checked once.

`aiokafka_options` gives the keyword arguments of ``AIOKafkaProducer`` /
``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``; the factories below apply them, so every
command reaches a SASL/TLS broker the same way. Each check raises a one-line `ConfigError`
naming the ``RACER_*`` variable; no message ever contains a secret: secrets stay
`SecretStr` until the moment they are handed to the client library.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from racer_online.errors import ConfigError, RacerError
from racer_online.files import readable_file, why
from racer_online.settings import (
    KAFKA_ENV,
    SASL_PROTOCOLS,
    TLS_PROTOCOLS,
    KafkaSecurityConfig,
    Settings,
)


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer on the configured brokers with their credentials (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, **aiokafka_options(settings) | options
    )


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer on the configured brokers with their credentials (not started)."""
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.kafka_bootstrap, **aiokafka_options(settings) | options
    )


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client on the configured brokers with their credentials (not started)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **aiokafka_options(settings) | options
    )


# How long a command waits for the broker's first answer: a Kafka broker answers a metadata
# request in milliseconds; a port that does not speak Kafka never answers, and the clients'
# own request timeout (40 s) is for requests to a broker that is there but busy.
PROBE_TIMEOUT_S = 5.0


async def check_reachable(settings: Settings, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One metadata request with a short timeout, credentials and TLS applied, before the
    real clients start: a wrong address fails in seconds, as one line."""
    probe = AIOKafkaClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout_s * 1000),
        **aiokafka_options(settings),
    )  # fmt: skip
    try:
        await probe.bootstrap()
    except (KafkaError, OSError) as exc:
        raise RacerError(
            f"cannot reach the Kafka broker at {settings.kafka_bootstrap} (RACER_KAFKA_BROKER):"
            f" no Kafka answer within {timeout_s:g} s ({type(exc).__name__})"
        ) from None
    finally:
        await probe.close()


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The partitions of a topic, none if it does not exist. Asked of an admin client, not a
    consumer's metadata: that holds only the topics it was asked about (Tansu answers with
    every topic, Apache Kafka does not)."""
    client = admin(settings)
    await client.start()
    try:
        (described,) = await client.describe_topics([topic])
    finally:
        await client.close()
    return sorted(p["partition"] for p in described.get("partitions") or [])


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """The same credentials for a plain aiokafka client (the CLI's producer)."""
    sec = settings.kafka_security
    options: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.protocol in TLS_PROTOCOLS:
        options["ssl_context"] = kafka_ssl_context(sec)
    if sec.protocol in SASL_PROTOCOLS:
        assert sec.password is not None
        options |= {
            "sasl_mechanism": sec.sasl_mechanism,
            "sasl_plain_username": sec.username,
            "sasl_plain_password": sec.password.get_secret_value(),
        }
    return options


async def refusal(settings: Settings, *, timeout_s: float = 10.0) -> str | None:
    """Why the first broker refuses this client, in one line naming the settings at fault
    (SASL credentials, the CA that does not trust its certificate); None when it does not
    refuse (it may not answer at all). aiokafka's bootstrap only says it could not connect,
    so one connection is made here to hear the reason."""
    sec = settings.kafka_security
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                        **aiokafka_options(settings)),
            timeout_s,
        )  # fmt: skip
    except ssl.SSLCertVerificationError as exc:
        trusted = sec.ca_file or "the system CAs"
        return (f"its TLS certificate is not trusted by {KAFKA_ENV}CA_FILE ({trusted}):"
                f" {exc.verify_message}")  # fmt: skip
    except ssl.SSLError as exc:
        return f"the TLS handshake failed: {why(exc)}"
    except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
        return (f"it refused user {sec.username!r} ({sec.sasl_mechanism}; {KAFKA_ENV}USERNAME,"
                f" {KAFKA_ENV}PASSWORD): {exc.args[0] if exc.args else exc}")  # fmt: skip
    except (KafkaError, OSError, TimeoutError):
        return None
    conn.close()
    return None


def kafka_ssl_context(sec: KafkaSecurityConfig) -> ssl.SSLContext:
    """A verifying client context: the CA bundle (else the system's), the client cert."""
    ca = readable_file(sec.ca_file, KAFKA_ENV + "CA_FILE")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{KAFKA_ENV}CA_FILE: {ca} is not a PEM CA bundle ({why(exc)})") from None
    cert = readable_file(sec.cert_file, KAFKA_ENV + "CERT_FILE")
    key = readable_file(sec.key_file, KAFKA_ENV + "KEY_FILE")
    if cert is not None:
        password = sec.key_password.get_secret_value() if sec.key_password else None
        try:
            context.load_cert_chain(cert, keyfile=key, password=password)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"{KAFKA_ENV}CERT_FILE: cannot load the client certificate {cert} with its key"
                f" ({why(exc)})"
            ) from None
    return context
