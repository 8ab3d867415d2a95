"""Payloads of every topic: the one schema source (docs/architecture.md, "Topics").

Inbound messages (queries, feedback) carry ``schema_version`` "MAJOR.MINOR" (default
"1.0"). A field this worker does not know is a typo, rejected rather than silently ignored,
unless the message declares a newer minor version than the worker's: then a newer producer
added an optional field during a rolling deploy, and the worker ignores it. Another major
version is rejected. Outbound messages ignore unknown fields when parsed, so a reader keeps
working when a newer writer adds one. Every float must be finite: NaN and
infinities are rejected even where the JSON parser accepts them (``NaN``, ``1e400``).
"""

from racer_online.messages.fields import (
    MAX_DEAD_LETTER_RAW,
    MAX_EMBEDDING_DIM,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_ITEMS,
    MAX_METADATA_VALUE_CHARS,
    MAX_MODELS,
    MAX_TEXT_CHARS,
    SAFE_NAME_PATTERN,
    AlertKind,
    Embedding,
    Label,
    Labels,
    Message,
    MessageError,
    Metadata,
    MetadataValue,
    ModelName,
    Probability,
    QueryId,
    ScopeName,
    Scores,
    Status,
    UnixTime,
    reason_of,
)
from racer_online.messages.inbound import (
    SCHEMA_MAJOR,
    SCHEMA_MINOR,
    FeedbackMessage,
    QueryMessage,
)
from racer_online.messages.keys import decision_key
from racer_online.messages.outbound import (
    AlertMessage,
    DeadLetter,
    DecisionFields,
    DecisionMessage,
    ThresholdMessage,
)

__all__ = [
    "MAX_DEAD_LETTER_RAW",
    "MAX_EMBEDDING_DIM",
    "MAX_MESSAGE_BYTES",
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_MODELS",
    "MAX_TEXT_CHARS",
    "SAFE_NAME_PATTERN",
    "SCHEMA_MAJOR",
    "SCHEMA_MINOR",
    "AlertKind",
    "AlertMessage",
    "DeadLetter",
    "DecisionFields",
    "DecisionMessage",
    "Embedding",
    "FeedbackMessage",
    "Label",
    "Labels",
    "Message",
    "MessageError",
    "Metadata",
    "MetadataValue",
    "ModelName",
    "Probability",
    "QueryId",
    "QueryMessage",
    "ScopeName",
    "Scores",
    "Status",
    "ThresholdMessage",
    "UnixTime",
    "decision_key",
    "reason_of",
]
