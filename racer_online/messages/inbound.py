"""Queries and feedback, with their schema version (see the package docstring)."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from racer_online.messages.fields import (
    MAX_TEXT_CHARS,
    Embedding,
    Labels,
    Message,
    MessageError,
    Metadata,
    Probability,
    QueryId,
    ScopeName,
    Scores,
    UnixTime,
    reason_of,
)

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


class _Inbound(Message):
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
            raise MessageError(reason_of(error)) from None

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
    scope: ScopeName  # required: labels filed under another scope would never join
    labels: Labels
    event_time: UnixTime | None = None
    grader: Annotated[str, Field(max_length=256)] | None = None
