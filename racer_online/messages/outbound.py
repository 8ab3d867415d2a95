"""Decisions, thresholds, alerts and dead letters: what the worker publishes."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Self, TypedDict

from pydantic import (
    Field,
)

from racer_online.core.bounds import Bound
from racer_online.core.scoring import Miss, Rule
from racer_online.messages.fields import (
    MAX_DEAD_LETTER_RAW,
    AlertKind,
    Message,
    MessageError,
    Status,
)


class DecisionMessage(Message):
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
    # Decided again: the query came back after its first decision's record expired (the
    # redelivery horizon, docs/reliability.md), so this decision may differ from the first.
    redecided: bool = False


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
    redecided: bool


class ThresholdMessage(Message):
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
    # What triggered it: "start", "timer", "records", "drift", "segment", "confirm", or
    # "until_certified" (every new record recalibrates until the window certifies).
    reason: str
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
    # The covariate channel's cut: a decision whose top score is below it is counted as
    # low (None: the channel does not watch this threshold).
    covariate_cut: float | None = None
    # The incarnation of the scope's Redis state (store/lua/incarnation.lua: its start, in
    # microseconds) the threshold was computed on; 0 before any. Thresholds order by
    # (incarnation, version): versions count from 1 again in a new incarnation.
    incarnation: int = 0
    # The scope identity the window was recorded under (service/identity.py): its models in
    # order and its base router. A worker routes only on a threshold of its own identity.
    scope_id: str | None = None
    computed_at: float = Field(default_factory=time.time)


class AlertMessage(Message):
    scope: str
    kind: AlertKind
    at: float = Field(default_factory=time.time)
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(Message):
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
