"""Settings: environment (prefix ``RACER_``, nested with ``__``) plus a TOML scopes file.

The env names are a public contract, e.g. ``RACER_KAFKA_BROKER``, ``RACER_REDIS_URL``,
``RACER_SCOPES_FILE``, ``RACER_AUDIT_RATE``, ``RACER_TOPICS__PARTITIONS``. Every problem
surfaces as a `ConfigError` whose message is one line naming the variable, or the file
and the field, so the CLI can print it as it is.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RedisDsn,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from racer_online.errors import ConfigError
from racer_online.redis_urls import URL_SCHEMES, parse_sentinel_url, url_kind
from racer_online.scopes import NAMES_ITSELF, ScopeConfig, every_error, load_scopes

TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]  # Kafka's own rule
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class TopicsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queries: TopicName = "racer.queries"
    decisions: TopicName = "racer.decisions"
    feedback: TopicName = "racer.feedback"
    thresholds: TopicName = "racer.thresholds"
    alerts: TopicName = "racer.alerts"
    dlq: TopicName = "racer.dlq"
    queries_retry: TopicName = "racer.queries.retry"  # parked records (kafka/retries.py)
    feedback_retry: TopicName = "racer.feedback.retry"
    partitions: int = Field(default=4, ge=1)
    # Of the topics the worker creates, Faust's own leader-election topic among them:
    # Faust would make them 1, so a replicated cluster lost them with a single broker.
    replication: int = Field(default=1, ge=1)


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
KAFKA_ENV = "RACER_KAFKA_SECURITY__"
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
assert set(get_args(KafkaProtocol)) >= TLS_PROTOCOLS | SASL_PROTOCOLS


def _does_not_fit(problem: str | None) -> None:
    if problem is not None:
        raise PydanticCustomError(NAMES_ITSELF, problem)


class KafkaSecurityConfig(BaseModel):
    """How to reach the brokers: ``RACER_KAFKA_SECURITY__*``. The fields are checked to fit
    together here, at load; `racer_online.kafka.clients` builds the client options (and reads
    the files); secrets stay `SecretStr`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: KafkaProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None  # PEM bundle; None trusts the system CAs (SSL, SASL_SSL)
    cert_file: Path | None = None  # client certificate (mutual TLS), PEM
    key_file: Path | None = None  # its private key, when not inside cert_file
    key_password: SecretStr | None = None

    @field_validator("protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_together(self) -> Self:
        _does_not_fit(self._problem())
        return self

    def _problem(self) -> str | None:
        sasl = self.protocol in SASL_PROTOCOLS
        if sasl and (not self.username or self.password is None):
            return (f"{KAFKA_ENV}PROTOCOL={self.protocol} needs {KAFKA_ENV}USERNAME and"
                    f" {KAFKA_ENV}PASSWORD")  # fmt: skip
        if not sasl and (self.username or self.password is not None):
            return (f"{KAFKA_ENV}USERNAME/PASSWORD: used only with PROTOCOL=SASL_PLAINTEXT or"
                    f" SASL_SSL, not {self.protocol}")  # fmt: skip
        if self.protocol not in TLS_PROTOCOLS:
            for name in ("ca_file", "cert_file", "key_file", "key_password"):
                if getattr(self, name) is not None:
                    return (f"{KAFKA_ENV}{name.upper()}: used only with PROTOCOL=SSL or SASL_SSL,"
                            f" not {self.protocol}")  # fmt: skip
        if self.cert_file is None and (self.key_file is not None or self.key_password is not None):
            return f"{KAFKA_ENV}KEY_FILE/KEY_PASSWORD: set {KAFKA_ENV}CERT_FILE too"
        return None


_REDIS_DSN = TypeAdapter(RedisDsn)


def _check_redis_url(value: Any) -> Any:
    try:
        kind, _ = url_kind(value) if isinstance(value, str) else ("server", False)
        if kind == "sentinel":
            parse_sentinel_url(value)
        else:  # validate, but keep the str that redis-py wants
            _REDIS_DSN.validate_python(value.replace("+cluster://", "://", 1))
    except ValidationError:
        raise PydanticCustomError("redis_url", URL_SCHEMES) from None
    except ValueError as error:
        raise PydanticCustomError("redis_url", str(error)) from None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RACER_",
        env_nested_delimiter="__",
        env_file=".env",
        env_ignore_empty=True,  # RACER_SCOPES_FILE= means unset, not Path(".")
        extra="ignore",  # one .env (e.g. docker-compose's) holds other variables too
        allow_inf_nan=False,
    )

    app_id: str = Field(default="racer-online", min_length=1)
    kafka_broker: str = "kafka://127.0.0.1:9092"
    redis_url: Annotated[str, BeforeValidator(_check_redis_url)] = "redis://127.0.0.1:6379/0"
    # Security (racer_online.kafka.clients builds the client options from these).
    kafka_security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)
    redis_username: str | None = None  # Redis ACL user; None: the default user
    redis_password: SecretStr | None = None  # rather than a password inside RACER_REDIS_URL
    redis_ca_file: Path | None = None  # rediss:// only; None trusts the system CAs
    redis_cert_file: Path | None = None  # client certificate (mutual TLS), rediss:// only
    redis_key_file: Path | None = None
    # A hung Redis must not stall routing for redis-py's default 5 s per batch.
    redis_timeout_s: Seconds = 1.0
    # redis-py's own retry of a command that met a dropped connection or a time-out, with
    # exponential backoff and jitter (its defaults moved between 5.x, 7.x and 8.x); then
    # the store reports an outage and the worker retries the batch (docs/reliability.md).
    redis_retries: int = Field(default=3, ge=0)
    redis_retry_backoff_s: Seconds = 0.05
    redis_retry_backoff_max_s: Seconds = 1.0
    # redis+sentinel:// only: the sentinels' own credentials, when they require any.
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    scopes_file: Path | None = None
    router_file: Path | None = None  # a trained text router, for queries that carry text
    dataset: Path | None = None  # an outcomes dataset instead of the shipped one

    audit_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    # Keys the audit draw. Replicas should share it (a redelivered query then draws the same
    # on any of them; the store already returns the first decision of a query).
    audit_key: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_hex(16)))
    recalibrate_interval_s: Seconds = 10.0
    recalibrate_every_records: int = Field(default=200, ge=1)
    pending_ttl_s: Seconds = 86_400.0  # the feedback horizon
    # Labels of a query not routed (yet) wait this long for it, then are dropped.
    held_feedback_ttl_s: Seconds = 300.0
    # Buckets of ~100 pending records per one-hour slot, at least: the first hour after a
    # fresh start (later slots follow the traffic). docs/operations.md sizes it.
    pending_min_buckets: int = Field(default=256, ge=1)
    window_size: int = Field(default=10_000, ge=1)
    window_max_age_s: Seconds = 7 * 86_400.0
    min_records: int = Field(default=1, ge=1)  # 1: never stricter than the bound itself
    threshold_poll_s: Seconds = 0.5
    # The leader renews each scope's lease every tick; a leader stalled or cut off for this
    # long loses it to the next (docs/reliability.md, "Two leaders").
    leader_lease_s: Seconds = 5.0
    n_recent: int = Field(default=200, ge=1)  # exact outcomes behind the realised miss rate
    # Drift monitor (docs/method.md): CUSUMs on exact audited outcomes, on "every invoked
    # model wrong" and on the router's top score; together at most
    # `monitor_false_alarm_rate` false alarms per decision. An alarm starts a segment drawn
    # at audit rate 1 until it holds `confirm_records` records; then it replaces the window
    # or merges back. A new scope's first segment fills to `warmup_records`: every later
    # threshold starts from it, and sets shrink as it grows (docs/results.md).
    monitor: bool = True
    monitor_false_alarm_rate: float = Field(default=1e-5, gt=0.0, lt=1.0)
    # A label-free channel on every routed decision: a top score below the window's lowest
    # 20% (docs/method.md). It sees a change of the traffic without the feedback lag.
    monitor_covariate: bool = True
    confirm_records: int = Field(default=30, ge=1)
    warmup_records: int = Field(default=120, ge=1)
    threshold_max_age_s: Seconds = 3600.0  # readiness fails past this
    batch_size: int = Field(default=500, ge=1)  # records per batch, at most
    batch_timeout_s: Seconds = 0.05  # how long a poll waits for records when there are none
    # How long the broker may hold a fetch while no record is there (Kafka's default): it
    # only paces an idle consumer's polls. The embedded broker holds a fetch for about half
    # of it even when records are there, so its environment sets 0.01 (embedded.py).
    fetch_max_wait_s: Seconds = 0.5
    # Idempotent producers: a retried send is never doubled (docs/reliability.md). Off only
    # for a broker without InitProducerId: the embedded Tansu (local/services.py).
    producer_idempotence: bool = True
    # How long a send waits for the broker's acknowledgement (acks=all: every in-sync
    # replica) before the producer retries it (aiokafka's default); idempotence makes the
    # retry safe.
    producer_request_timeout_s: Seconds = 40.0

    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_enabled: bool = True
    # Every endpoint but /health and /ready asks for `Authorization: Bearer <token>` once a
    # token is set; a worker refuses to listen beyond loopback without one (worker/web.py).
    # RACER_WEB_TOKEN_FILE reads it from a file instead (a mounted secret).
    web_token: SecretStr | None = None
    web_token_file: Path | None = None
    # HTTPS: the server's certificate chain (PEM) and its key, when not inside the cert file.
    web_tls_cert_file: Path | None = None
    web_tls_key_file: Path | None = None
    # How often the worker asks the broker for its consumer lag (racer_consumer_lag):
    # /metrics reads what the last refresh found, so a scrape never reaches the broker.
    lag_refresh_s: Seconds = 10.0
    # The decision API (POST /v1/route) coalesces the requests that arrive within this long
    # of each other into one Redis round trip (and one produce batch): worker/api.py.
    api_batch_wait_s: float = Field(default=0.001, ge=0.0, le=0.1)
    # Where a consumer group without committed offsets on a topic starts (a new deployment,
    # a renamed app id, expired offsets: the broker cannot tell them apart): "none" stops
    # the worker with one line, so that replaying the log is an operator's decision
    # (`racer-online offsets reset`, racer_online/kafka/offsets.py).
    offset_reset: Literal["none", "earliest", "latest"] = "none"
    commit_failures_max: int = Field(default=5, ge=1)  # failed commits in a row: stop
    # A query or feedback event that cannot be decided yet (a scope this worker does not
    # know, text and no router) is parked on the retry topic and tried again every
    # retry_delay_s until it has waited this long since a worker first read it (the
    # worker's clock, never the producer's timestamp), then dead-lettered: during a rolling
    # deploy the scope may be known to the upgraded workers only (kafka/retries.py).
    unknown_scope_grace_s: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    retry_delay_s: Seconds = 5.0
    # A scope with dead letters and not one message decided or recorded over this long
    # raises an "all_dead_lettered" alert (a heuristic trigger, not part of the guarantee).
    dead_scope_alert_s: Seconds = 60.0
    # None keeps Faust's defaults; tests and the demo use 2 / 0.5 / 2 (FAST_GROUP_ENV in
    # racer_online/testing.py; docs/architecture.md, "Services").
    broker_session_timeout_s: Seconds | None = None
    broker_heartbeat_interval_s: Seconds | None = None
    broker_rebalance_timeout_s: Seconds | None = None
    # Faust's and the Kafka client's log level: their INFO lines (some hundred at a start)
    # are off by default. The worker's own lines (start, thresholds, alerts) are INFO unless
    # this is ERROR or CRITICAL (`own_log_level`).
    log_level: LogLevel = "WARNING"

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Settings from the environment, with errors as one-line `ConfigError`s; the
        scopes file is part of them, so it is read and checked here too."""
        try:
            settings = cls(**overrides)
        except ValidationError as error:
            raise ConfigError(f"setting {every_error(error, env=True)}") from None
        settings.scopes  # noqa: B018  (cached: raises a ConfigError naming the file and field)
        return settings

    @field_validator("kafka_broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        try:
            _split_brokers(value)
        except ValueError as error:
            raise PydanticCustomError("kafka_broker", str(error)) from None
        return value

    @property
    def own_log_level(self) -> str:
        """The level of racer-online's own loggers: DEBUG or INFO, or this setting's when it
        is ERROR or CRITICAL."""
        return self.log_level if self.log_level in ("DEBUG", "ERROR", "CRITICAL") else "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker_heartbeat_interval_s")
    @classmethod
    def _heartbeat_within_session(cls, value: float | None, info: ValidationInfo) -> float | None:
        session = info.data.get("broker_session_timeout_s")  # declared, so validated, first
        if value is not None and session is not None and value >= session:
            raise PydanticCustomError("heartbeat", "must be below the session timeout")
        return value

    @model_validator(mode="after")
    def _redis_fits_together(self) -> Self:
        _does_not_fit(self._redis_problem())
        return self

    @model_validator(mode="after")
    def _web_fits_together(self) -> Self:
        if self.web_token is not None and self.web_token_file is not None:
            _does_not_fit("RACER_WEB_TOKEN_FILE: RACER_WEB_TOKEN is set too; keep only one")
        if self.web_token is not None and not self.web_token.get_secret_value().strip():
            _does_not_fit("RACER_WEB_TOKEN: empty")
        if self.web_tls_key_file is not None and self.web_tls_cert_file is None:
            _does_not_fit("RACER_WEB_TLS_KEY_FILE: set RACER_WEB_TLS_CERT_FILE too")
        return self

    @model_validator(mode="after")
    def _lease_outlives_ticks(self) -> Self:
        if self.leader_lease_s < 2 * self.leader_tick_s:  # else it lapses between renewals
            _does_not_fit(f"RACER_LEADER_LEASE_S: at least two leader ticks "
                          f"({2 * self.leader_tick_s:g} s)")  # fmt: skip
        return self

    @property
    def leader_tick_s(self) -> float:
        """The leader looks at new window records as often as workers look for thresholds."""
        return min(self.threshold_poll_s, self.recalibrate_interval_s)

    def _redis_problem(self) -> str | None:
        url = urlsplit(self.redis_url)
        kind, tls = url_kind(self.redis_url)
        if not tls:  # TLS files need a TLS scheme
            for name in ("redis_ca_file", "redis_cert_file", "redis_key_file"):
                if getattr(self, name) is not None:
                    return f"RACER_{name.upper()}: needs a rediss:// RACER_REDIS_URL (TLS)"
        if self.redis_key_file is not None and self.redis_cert_file is None:
            return "RACER_REDIS_KEY_FILE: set RACER_REDIS_CERT_FILE too"
        # redis-py lets the URL's credentials win over keyword ones: refuse the ambiguity.
        if self.redis_password is not None and url.password:
            return "RACER_REDIS_PASSWORD: RACER_REDIS_URL holds a password too; keep only one"
        if self.redis_username is not None and url.username:
            return "RACER_REDIS_USERNAME: RACER_REDIS_URL holds a user name too"
        if kind != "sentinel":
            for name in ("redis_sentinel_username", "redis_sentinel_password"):
                if getattr(self, name) is not None:
                    return f"RACER_{name.upper()}: needs a redis+sentinel:// RACER_REDIS_URL"
        return None

    @property
    def kafka_bootstrap(self) -> str:
        """``kafka://h1:p1,h2:p2`` as aiokafka's ``h1:p1,h2:p2``."""
        return ",".join(_split_brokers(self.kafka_broker))

    @cached_property
    def scopes(self) -> dict[str, ScopeConfig]:
        """Scopes keyed by name, read once from ``scopes_file`` or the packaged defaults."""
        return load_scopes(self.scopes_file)


def _split_brokers(url: str) -> list[str]:
    """``kafka://h:p[,h:p]`` into ``["h:p", ...]``; like Faust, ``;`` also separates, the
    scheme may be left out and the port defaults to 9092."""
    hosts = []
    for part in url.replace(";", ",").split(","):
        address = part.strip().removeprefix("kafka://")
        host, colon, port = address.rpartition(":")
        if not colon or address.endswith("]"):  # no port (IPv6 hosts come in brackets)
            host, port = address, "9092"
        if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"broker {part.strip()!r} is not kafka://host:port")
        hosts.append(f"{host}:{port}")
    return hosts
