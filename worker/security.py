"""Broker credentials as Faust takes them (``faust.App(..., **kafka_options(settings))``)."""

from __future__ import annotations

from typing import Any

import faust
from faust.types.auth import CredentialsT

from racer_online.kafka.clients import kafka_ssl_context
from racer_online.settings import SASL_PROTOCOLS, TLS_PROTOCOLS, Settings


def kafka_options(settings: Settings) -> dict[str, Any]:
    """``faust.App(..., **kafka_options(settings))``: nothing for PLAINTEXT, else
    ``broker_credentials`` (Faust hands them to its consumer, producer and admin client)."""
    sec = settings.kafka_security
    context = kafka_ssl_context(sec) if sec.protocol in TLS_PROTOCOLS else None
    if sec.protocol in SASL_PROTOCOLS:
        assert sec.password is not None  # checked at load (KafkaSecurityConfig)
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
