"""What Faust takes to reach a secured broker (``kafka_options``) and to serve HTTP safely
(``web_options``): the bearer-token gate, TLS and no default pages of Faust's own."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

import faust
from faust.types.auth import CredentialsT

from racer_online.errors import ConfigError
from racer_online.files import readable_file, why
from racer_online.kafka.clients import kafka_ssl_context
from racer_online.settings import SASL_PROTOCOLS, TLS_PROTOCOLS, Settings
from worker.http_auth import bearer_gate
from worker.http_problems import Middleware, problems

OPEN_PATHS = frozenset({"/health", "/ready"})  # the probes: no token, nothing secret
LOGIN_PATH = "/login"  # the dashboard's login form (worker/dashboard.py)


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


def web_options(settings: Settings) -> dict[str, Any]:
    """``faust.App(..., **web_options(settings))``: Faust's own pages (``/router``,
    ``/table``, statistics, graph) off; problem+json errors; the token gate when a token is
    set; HTTPS when a certificate is. Refuses to listen beyond loopback without a token."""
    check_web_exposure(settings)
    token = web_token(settings)
    middlewares: list[Middleware] = [problems]
    if token is not None:
        middlewares.append(bearer_gate(token, open_paths=OPEN_PATHS, login_path=LOGIN_PATH))
    options: dict[str, Any] = {
        "web_router_enabled": False, "web_tables_enabled": False,
        "web_stats_enabled": False, "web_graph_enabled": False,
        "web_application_options": {"middlewares": middlewares},
    }  # fmt: skip
    if settings.web_tls_cert_file is not None:
        options["web_ssl_context"] = web_ssl_context(settings)
    return options


def web_token(settings: Settings) -> str | None:
    """The token, from RACER_WEB_TOKEN or the file RACER_WEB_TOKEN_FILE names (stripped)."""
    if settings.web_token is not None:
        return settings.web_token.get_secret_value().strip()
    path = readable_file(settings.web_token_file, "RACER_WEB_TOKEN_FILE")
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RACER_WEB_TOKEN_FILE: cannot read {path} ({why(exc)})") from None
    if not token:
        raise ConfigError(f"RACER_WEB_TOKEN_FILE: {path} is empty")
    return token


def listens_beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return True


def check_web_exposure(settings: Settings) -> None:
    """Closed by default: a web server reachable beyond loopback needs a token."""
    if (
        settings.web_enabled
        and listens_beyond_loopback(settings.web_host)
        and settings.web_token is None
        and settings.web_token_file is None
    ):
        raise ConfigError(
            f"the web server would listen on {settings.web_host}:{settings.web_port} without "
            "a token: set RACER_WEB_TOKEN (or RACER_WEB_TOKEN_FILE), or RACER_WEB_HOST=127.0.0.1"
        )


def web_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The server side of HTTPS (TLS 1.2 at least, Python's defaults otherwise)."""
    cert = readable_file(settings.web_tls_cert_file, "RACER_WEB_TLS_CERT_FILE")
    key = readable_file(settings.web_tls_key_file, "RACER_WEB_TLS_KEY_FILE")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), keyfile=key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"RACER_WEB_TLS_CERT_FILE: cannot load the certificate {cert} with its key ({why(exc)})"
        ) from None
    return context
