"""What every payload is made of: size limits, names, scores, labels, the base model."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

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
)
from pydantic_core import PydanticCustomError

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
AlertKind = Literal[
    "drift",
    "risk_violation",
    "stale_calibration",
    "state_lost",
    "scope_changed",
    "all_dead_lettered",
]


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


def reason_of(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"invalid JSON: {first['ctx']['error']}"
    where = ".".join(str(part) for part in first["loc"] if part != "")  # "" is a bad key
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"schema: {where + ': ' if where else ''}{first['msg']}{more}"


class Message(BaseModel):
    """The base of every payload: frozen, finite floats, parsed with one-line errors."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls, raw: bytes | str) -> Self:
        """Validate one JSON payload; raise `MessageError` with a one-line reason."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise MessageError(f"too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            raise MessageError(reason_of(error)) from None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
