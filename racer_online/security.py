"""Broker and Redis credentials from settings, as the options each client library takes.

- `kafka_options` -> keyword arguments of ``faust.App`` (``broker_credentials``).
- `aiokafka_options` -> keyword arguments of ``AIOKafkaProducer`` / ``AIOKafkaConsumer``.
- `redis_options` -> keyword arguments of ``redis.asyncio.Redis.from_url``.

Each checks that the settings fit together and raises a one-line `ConfigError` naming the
``RACER_*`` variable when they do not. No message ever contains a secret: secrets stay
`SecretStr` until the moment they are handed to the client library.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import faust
from faust.types.auth import CredentialsT

from racer_online.errors import ConfigError
from racer_online.settings import KafkaSecurityConfig, Settings

KAFKA_ENV = "RACER_KAFKA_SECURITY__"
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def kafka_options(settings: Settings) -> dict[str, Any]:
    """``faust.App(..., **kafka_options(settings))``: nothing for PLAINTEXT, else
    ``broker_credentials`` (Faust hands them to its consumer, producer and admin client)."""
    sec = settings.kafka_security
    _check_kafka(sec)
    context = kafka_ssl_context(sec) if sec.protocol in TLS_PROTOCOLS else None
    if sec.protocol in SASL_PROTOCOLS:
        assert sec.password is not None  # _check_kafka
        credentials: CredentialsT = faust.SASLCredentials(
            username=sec.username,
            password=sec.password.get_secret_value(),
            ssl_context=context,  # given: SASL_SSL; None: SASL_PLAINTEXT
            mechanism=sec.sasl_mechanism,
        )
        return {"broker_credentials": credentials}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """The same credentials for a plain aiokafka client (the CLI's producer)."""
    sec = settings.kafka_security
    _check_kafka(sec)
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
    ca = _readable(sec.ca_file, KAFKA_ENV + "CA_FILE")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{KAFKA_ENV}CA_FILE: {ca} is not a PEM CA bundle ({_why(exc)})"
        ) from None
    cert = _readable(sec.cert_file, KAFKA_ENV + "CERT_FILE")
    key = _readable(sec.key_file, KAFKA_ENV + "KEY_FILE")
    if cert is not None:
        password = sec.key_password.get_secret_value() if sec.key_password else None
        try:
            context.load_cert_chain(cert, keyfile=key, password=password)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"{KAFKA_ENV}CERT_FILE: cannot load the client certificate {cert} with its key"
                f" ({_why(exc)})"
            ) from None
    return context


def redis_options(settings: Settings) -> dict[str, Any]:
    """``redis.asyncio.Redis.from_url(settings.redis_url, **redis_options(settings))``."""
    url = urlsplit(settings.redis_url)
    tls = url.scheme == "rediss"
    files = {
        "RACER_REDIS_CA_FILE": settings.redis_ca_file,
        "RACER_REDIS_CERT_FILE": settings.redis_cert_file,
        "RACER_REDIS_KEY_FILE": settings.redis_key_file,
    }
    for name, path in files.items():
        if path is not None and not tls:
            raise ConfigError(f"{name}: needs a rediss:// RACER_REDIS_URL (TLS)")
    if settings.redis_key_file is not None and settings.redis_cert_file is None:
        raise ConfigError("RACER_REDIS_KEY_FILE: set RACER_REDIS_CERT_FILE too")
    # redis-py lets the URL's credentials win over keyword ones: refuse the ambiguity.
    if settings.redis_password is not None and url.password:
        raise ConfigError(
            "RACER_REDIS_PASSWORD: RACER_REDIS_URL holds a password too; keep only one"
        )
    if settings.redis_username is not None and url.username:
        raise ConfigError("RACER_REDIS_USERNAME: RACER_REDIS_URL holds a user name too")
    options: dict[str, Any] = {}
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if tls:
        options["ssl_cert_reqs"] = "required"
        readable = {name: _readable(path, name) for name, path in files.items()}
        for name, option in (
            ("RACER_REDIS_CA_FILE", "ssl_ca_certs"),
            ("RACER_REDIS_CERT_FILE", "ssl_certfile"),
            ("RACER_REDIS_KEY_FILE", "ssl_keyfile"),
        ):
            if readable[name] is not None:
                options[option] = readable[name]
    return options


def _check_kafka(sec: KafkaSecurityConfig) -> None:
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


def _readable(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    if not path.exists():
        raise ConfigError(f"{name}: {path} not found")
    if not path.is_file():
        raise ConfigError(f"{name}: {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return str(path)


def _why(exc: Exception) -> str:
    """The library's reason, on one line (OpenSSL's reasons name no secret)."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return " ".join(str(reason).split())
