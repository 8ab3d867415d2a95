"""A decision as it is published and stored, a rejected message, and the audit draw.

The audit draw decides which decisions are graded on every model. It reads only the scope,
the query id and a deployment secret, never the query's content, so audited decisions are
a uniform sample of the traffic (docs/method.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import pydantic_core

from racer_online import core
from racer_online.messages import DecisionFields, DecisionMessage, ThresholdMessage


class Routed(NamedTuple):
    """A decision, encoded once: these bytes are stored and published as they are."""

    fields: DecisionFields
    raw: bytes

    @classmethod
    def encode(cls, fields: DecisionFields) -> Routed:
        # Built from validated parts: serialise without building and validating a model,
        # which would cost about five times as much on the hot path.
        return cls(fields, pydantic_core.to_json(fields))

    @property
    def decision(self) -> DecisionMessage:
        return DecisionMessage.model_validate(self.fields)


@dataclass(frozen=True)
class Rejected:
    """A message the service cannot use; it goes to the dead-letter topic with this reason."""

    kind: str  # short and stable, for metrics: unknown_scope, unknown_model, no_scores
    reason: str


def audit_draw(scope: str, query_id: str, *, key: bytes) -> float:
    """A uniform draw that repeats on redelivery and that no client can steer: keyed with a
    deployment secret, so an id chosen by a client or derived from the prompt does not make
    the draw depend on the query. It never reads the text or the scores."""
    digest = hashlib.blake2b(f"{scope}\0{query_id}".encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def audit_rate(threshold: ThresholdMessage, base: float) -> float:
    """The rate a decision is drawn at: it depends on time and the monitor's state (carried
    by the threshold), never on the query. At lam = 1 every model is invoked and graded
    anyway, so the decision is a full-label record at no extra cost."""
    if threshold.lam >= core.FALLBACK_LAM:
        return 1.0
    return base if threshold.audit_rate is None else max(base, threshold.audit_rate)
