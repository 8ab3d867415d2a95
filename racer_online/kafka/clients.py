"""Kafka clients from settings: credentials as aiokafka takes them, checked once.

`aiokafka_options` gives the keyword arguments of ``AIOKafkaProducer`` /
``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``; the factories below apply them, so every
command reaches a SASL/TLS broker the same way. Each check raises a one-line `ConfigError`
naming the ``RACER_*`` variable; no message ever contains a secret: secrets stay
`SecretStr` until the moment they are handed to the client library.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from racer_online.errors import ConfigError
from racer_online.files import readable_file, why
from racer_online.settings import KafkaSecurityConfig, Settings

KAFKA_ENV = "RACER_KAFKA_SECURITY__"
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


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


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """The same credentials for a plain aiokafka client (the CLI's producer)."""
    sec = settings.kafka_security
    check_kafka_security(sec)
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


def check_kafka_security(sec: KafkaSecurityConfig) -> None:
    sasl = sec.protocol in SASL_PROTOCOLS
    if sasl and (not sec.username or sec.password is None):
        raise ConfigError(
            f"{KAFKA_ENV}PROTOCOL={sec.protocol} needs {KAFKA_ENV}USERNAME and {KAFKA_ENV}PASSWORD"
        )
    if not sasl and (sec.username or sec.password is not None):
        raise ConfigError(
            f"{KAFKA_ENV}USERNAME/PASSWORD: used only with PROTOCOL=SASL_PLAINTEXT or SASL_SSL,"
            f" not {sec.protocol}"
        )
    if sec.protocol not in TLS_PROTOCOLS:
        for name in ("ca_file", "cert_file", "key_file", "key_password"):
            if getattr(sec, name) is not None:
                raise ConfigError(
                    f"{KAFKA_ENV}{name.upper()}: used only with PROTOCOL=SSL or SASL_SSL,"
                    f" not {sec.protocol}"
                )
    if sec.cert_file is None and (sec.key_file is not None or sec.key_password is not None):
        raise ConfigError(f"{KAFKA_ENV}KEY_FILE/KEY_PASSWORD: set {KAFKA_ENV}CERT_FILE too")
