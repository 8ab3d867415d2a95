"""Payloads of every topic: the one schema source (docs/architecture.md, "Topics").

Inbound messages (queries, feedback) carry ``schema_version`` "MAJOR.MINOR" (default
"1.0"). A field this worker does not know is a typo, rejected rather than silently ignored,
unless the message declares a newer minor version than the worker's: then a newer producer
added an optional field during a rolling deploy, and the worker ignores it. Another major
version is rejected. Outbound messages ignore unknown fields when parsed, so a reader keeps
working when a newer writer adds one. Every float must be finite: NaN and
infinities are rejected even where the JSON parser accepts them (``NaN``, ``1e400``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import time
from typing import Annotated, Any, Literal, Self, TypedDict

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from racer_online.core.bounds import Bound
from racer_online.core.scoring import Miss, Rule
from racer_online.errors import InvalidInputError

MAX_MESSAGE_BYTES = 1 << 20  # checked before parsing, so a huge payload costs nothing
MAX_DEAD_LETTER_RAW = 256 * 1024  # raw bytes kept in a dead letter (base64 grows them)
MAX_TEXT_CHARS = 32 * 1024
MAX_EMBEDDING_DIM = 8192
MAX_MODELS = 256
MAX_METADATA_ITEMS = 64
MAX_METADATA_VALUE_CHARS = 1024

SAFE_NAME_PATTERN = r"[A-Za-z0-9._-]{1,128}"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)


def _safe_name(value: str) -> str:
    # Scope names end up in Redis keys, metric labels and URLs: keep them plain.
    if not _SAFE_NAME.fullmatch(value):
        raise PydanticCustomError(
            "safe_name", "use 1 to 128 letters, digits, '.', '_' or '-' characters"
        )
    return value


ScopeName = Annotated[str, AfterValidator(_safe_name)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
QueryId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
UnixTime = Annotated[float, Field(ge=0.0)]
Status = Literal["certified", "stale", "fallback"]
AlertKind = Literal["drift", "risk_violation", "stale_calibration"]


class MessageError(InvalidInputError):
    """A payload that cannot be used; ``reason`` is one line for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _label(value: Any) -> int:
    # Exact 0/1 or a JSON boolean; "1" and 1.0 are more likely bugs than labels.
    if type(value) in (bool, int) and value in (0, 1):
        return int(value)
    raise PydanticCustomError("label", "label must be 0, 1, true or false")


def _metadata_value(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # One clear error instead of one per member of the union.
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "metadata_value",
            "metadata values must be a finite number, a boolean or a string of at most "
            f"{MAX_METADATA_VALUE_CHARS} characters",
        ) from None


Label = Annotated[int, BeforeValidator(_label)]
MetadataValue = Annotated[
    bool | int | float | Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
    WrapValidator(_metadata_value),
]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=128)], MetadataValue], Field(max_length=MAX_METADATA_ITEMS)
]
Scores = Annotated[dict[ModelName, Probability], Field(min_length=1, max_length=MAX_MODELS)]
Labels = Annotated[dict[ModelName, Label], Field(min_length=1, max_length=MAX_MODELS)]
Embedding = Annotated[list[float], Field(min_length=1, max_length=MAX_EMBEDDING_DIM)]


def _reason(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"invalid JSON: {first['ctx']['error']}"
    where = ".".join(str(part) for part in first["loc"] if part != "")  # "" is a bad key
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"schema: {where + ': ' if where else ''}{first['msg']}{more}"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls, raw: bytes | str) -> Self:
        """Validate one JSON payload; raise `MessageError` with a one-line reason."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise MessageError(f"too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            raise MessageError(_reason(error)) from None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


SCHEMA_MAJOR, SCHEMA_MINOR = 1, 0  # of the inbound messages this worker reads


def _schema_version(value: str) -> str:
    major, dot, minor = value.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise PydanticCustomError("schema_version", "use MAJOR.MINOR, e.g. '1.0'")
    if int(major) != SCHEMA_MAJOR:
        raise PydanticCustomError(
            "schema_version",
            f"this worker reads schema {SCHEMA_MAJOR}.x, not {value}: upgrade it first",
        )
    return value


def _declares_newer_minor(raw: bytes | str) -> bool:
    """Whether the payload names a later minor version of our major one (read only after a
    failed validation, so the hot path parses each payload once)."""
    try:
        version = json.loads(raw).get("schema_version")
        major, minor = (int(part) for part in version.split("."))
    except (ValueError, AttributeError, TypeError):
        return False
    return major == SCHEMA_MAJOR and minor > SCHEMA_MINOR


class _Inbound(_Message):
    model_config = ConfigDict(extra="forbid")

    schema_version: Annotated[str, Field(max_length=16), AfterValidator(_schema_version)] = "1.0"

    @classmethod
    def parse(cls, raw: bytes | str) -> Self:
        try:
            return super().parse(raw)
        except MessageError as error:
            if "Extra inputs are not permitted" not in error.reason:
                raise
            if not _declares_newer_minor(raw):
                raise
        try:
            return cls._lenient().model_validate_json(raw)
        except ValidationError as error:
            raise MessageError(_reason(error)) from None

    @classmethod
    @functools.cache
    def _lenient(cls) -> type[Self]:
        """The same message, ignoring the fields a newer minor version added."""
        return type(cls.__name__, (cls,), {"model_config": cls.model_config | {"extra": "ignore"}})


class QueryMessage(_Inbound):
    query_id: QueryId
    scope: ScopeName = "default"
    scores: Scores | None = None
    p_abstain: Probability | None = None
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = None
    embedding: Embedding | None = None
    event_time: UnixTime | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_something_to_route(self) -> Self:
        if self.scores is None and self.text is None and self.embedding is None:
            raise PydanticCustomError("no_input", "one of scores, text or embedding is required")
        return self


class FeedbackMessage(_Inbound):
    query_id: QueryId
    scope: ScopeName = "default"
    labels: Labels
    event_time: UnixTime | None = None
    grader: Annotated[str, Field(max_length=256)] | None = None


class DecisionMessage(_Message):
    query_id: str
    scope: str
    models: list[str]  # most promising first
    abstain: bool
    flag_unanswerable: bool
    audit: bool
    audit_rate: float | None = None  # the rate this decision was drawn at
    lam: float
    threshold_version: int
    threshold_status: Status
    alpha: float
    delta: float
    bound: Bound
    scores: dict[str, float]
    p_abstain: float | None = None
    decided_at: float = Field(default_factory=time.time)


class DecisionFields(TypedDict):
    """A `DecisionMessage` as the routing hot path builds it, unvalidated (building the model
    costs five times as much): mypy checks every key where one is built, and a unit test
    that these are exactly the model's fields, so a typo on either side fails."""

    query_id: str
    scope: str
    models: list[str]
    abstain: bool
    flag_unanswerable: bool
    audit: bool
    audit_rate: float | None
    lam: float
    threshold_version: int
    threshold_status: Status
    alpha: float
    delta: float
    bound: Bound
    scores: dict[str, float]
    p_abstain: float | None
    decided_at: float


class ThresholdMessage(_Message):
    scope: str
    version: int
    lam: float
    status: Status
    certified: bool
    n: int
    alpha: float
    delta: float
    bound: Bound
    rule: Rule
    miss: Miss
    m_star: int  # -1: nothing certified
    # None when the window is empty: NaN is not JSON.
    empirical_risk: float | None = None
    mean_set_size: float | None = None
    abstain_rate: float | None = None
    mean_price: float | None = None
    window_start: float | None = None
    window_end: float | None = None
    reason: str  # what triggered it: "start", "timer", "records", "drift", ...
    # Exact miss rate of the most recent audited live decisions, with a 95% interval.
    realised_n: int = 0
    realised_miss_rate: float | None = None
    realised_low: float | None = None
    realised_high: float | None = None
    # Display only: non-audit decisions whose invoked models all failed (an upper bound).
    upper_bound_n: int = 0
    upper_bound_miss_rate: float | None = None
    alpha_t: float | None = None  # the ACI working level, when the controller is on
    # Audited decisions whose grading never completed, entered as a worst case, in all.
    expired_audits: int = 0
    # Per model, on the window at lam: {"in_set_rate": ..., "price_share": ...}. Descriptive.
    per_model: dict[str, dict[str, float]] = Field(default_factory=dict)
    # The audit rate the workers draw at while this threshold stands (None: the setting).
    audit_rate: float | None = None
    computed_at: float = Field(default_factory=time.time)


class AlertMessage(_Message):
    scope: str
    kind: AlertKind
    at: float = Field(default_factory=time.time)
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(_Message):
    source_topic: str
    partition: int
    offset: int
    key: str | None
    error_class: str
    reason: str
    raw_b64: str | None  # None: the record had no value (a tombstone)
    raw_size: int = 0
    raw_sha256: str | None = None  # identifies the message even when raw_b64 is cut
    raw_truncated: bool = False  # raw_b64 holds the first MAX_DEAD_LETTER_RAW bytes only
    at: float = Field(default_factory=time.time)

    @classmethod
    def from_error(
        cls,
        raw: bytes | None,
        error: BaseException,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | str | None = None,
        error_class: str | None = None,
        at: float | None = None,
    ) -> Self:
        """Record a payload that failed, with the reason the operator will read.

        ``error_class`` defaults to the exception's class name.
        """
        name = error_class or type(error).__name__
        kept = MAX_DEAD_LETTER_RAW  # a dead letter must fit a Kafka record itself
        reason = error.reason if isinstance(error, MessageError) else str(error)
        if isinstance(key, bytes):
            key = key.decode(errors="backslashreplace")
        return cls(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key,
            error_class=name,
            reason=(reason or name)[:1000],
            raw_b64=None if raw is None else base64.b64encode(raw[:kept]).decode("ascii"),
            raw_size=0 if raw is None else len(raw),
            raw_sha256=None if raw is None else hashlib.sha256(raw).hexdigest(),
            raw_truncated=raw is not None and len(raw) > kept,
            at=time.time() if at is None else at,
        )

    @property
    def raw(self) -> bytes | None:
        return None if self.raw_b64 is None else base64.b64decode(self.raw_b64)
