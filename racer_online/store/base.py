"""The store interface: what the service needs from Redis, with an in-memory twin.

A pending record holds what a routed decision needs later (records.py) and the labels
graded so far, in the time slot of its decision, until the feedback horizon. A record enters
the scope's window exactly once: when it was drawn for audit and every model of the
scope's catalogue is graded, whichever of query and feedback came last, or when its
feedback horizon ended first: then the leader's sweep enters it with its missing labels as
'?', and the leader takes the worst case over them (docs/method.md says why this keeps the
bound valid).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from racer_online.store.records import PendingRecord


class FeedbackOutcome(StrEnum):
    ENTERED = "entered"  # completed an audited record: it joined the window
    JOINED = "joined"  # new labels for a routed query
    HELD = "held"  # no query yet: kept until it comes, for a short while (held_ttl_s)
    DUPLICATE = "duplicate"  # nothing new (a redelivery)
    CONFLICT = "conflict"  # disagrees with an earlier label; the first label stands
    LATE = "late"  # older than the feedback horizon: dropped


class PendingWrite(NamedTuple):
    """A decision as the store keeps it: with the query, enough to rebuild it exactly."""

    scope: str
    query_id: str
    scores: bytes  # the quantised scores the decision used (window.pack_scores): audits keep them
    lam: float  # the threshold the decision used
    audit: bool
    invoked: tuple[int, ...] = ()  # catalogue indices of the models the decision invokes
    decided_at: float = 0.0  # the decision's time: a restarted window keeps those after it
    version: int = 0  # of the threshold
    status: str = "certified"  # of the threshold
    audit_rate: float = 0.0  # the rate the audit was drawn at
    covariate: int = 0  # records.covariate_flags: counted at routing time
    # The scope's incarnation the threshold comes from (0: unchecked, for tools and tests):
    # the store refuses the batch if Redis' state of the scope is another one.
    incarnation: int = 0
    # When the query's record was written (its Kafka timestamp): a first decision of it can
    # only be in a slot from then on, so a redelivery searches back to there.
    sent_at: float | None = None


class RouteResult(NamedTuple):
    created: bool
    entered: bool  # early feedback completed the record at once
    first: PendingRecord | None = None  # a redelivery: the record of the first decision
    # Stored now, but the query was sent before the oldest live slot: a first decision, if
    # one was made, has expired with its slot, and this one may differ (`redelivery_search`).
    beyond: bool = False


@dataclass(frozen=True)
class SweepResult:
    """One sweep of audited records whose feedback horizon ended before they completed."""

    entered: int  # entered the window now, missing labels as '?' (the leader's worst case)
    lost: int  # their record was gone before the sweep came: counted, never entered
    expired_total: int  # entered as a worst case since the scope began
    # audits still waiting for their grading after the sweep (a gauge, not a count)
    awaiting: int = field(default=0, compare=False)


@dataclass(frozen=True)
class LabelWrite:
    scope: str
    query_id: str
    labels: Mapping[str, int]
    incarnation: int = 0  # as PendingWrite's


class StreamId(NamedTuple):
    """A Redis stream entry id, ``<ms>-<seq>``; tuples order as Redis orders the ids."""

    ms: int
    seq: int = 0

    @classmethod
    def parse(cls, text: str) -> StreamId:
        """``"1700000000000-3"`` (or just ``"1700000000000"``, sequence 0)."""
        ms, _, seq = text.partition("-")
        return cls(int(ms), int(seq or 0))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


class Lease(NamedTuple):
    """A scope's live leader lease after a `Store.hold_lease` call."""

    epoch: int  # the fencing token: every leader write carries it and the store checks it
    holder: str  # the caller's own id when it holds the lease now, else the other holder's


@dataclass(frozen=True)
class WindowEntry:
    id: str  # "<ms>-<seq>": the time the record entered the window
    scores: bytes
    labels: str  # one '0'/'1' per catalogue model; '?' never graded (a swept audit)
    lam: float
    decided_at: float = 0.0
    query: str = ""  # the hex of the query id's hash: a redelivered query can enter twice

    @property
    def entered_ms(self) -> int:
        return StreamId.parse(self.id).ms


class Store(Protocol):
    """Both implementations are configured with each scope's catalogue, TTL and window size.

    The leader's writes (the window's trims and sweeps, thresholds, alerts, the monitor's
    state) carry the scope's lease ``epoch``; a write under a superseded epoch raises
    `FencedError` and changes nothing. Routes, feedback and leases carry the incarnation
    of the scope's state the caller's memory comes from; another one raises
    `StateLostError` and changes nothing."""

    async def route(self, writes: Sequence[PendingWrite]) -> list[RouteResult]: ...

    async def feedback(self, writes: Sequence[LabelWrite]) -> list[FeedbackOutcome]: ...

    async def read_window(
        self, scope: str, *, after: str | None = None, count: int = 10_000
    ) -> list[WindowEntry]: ...

    async def trim_window(self, scope: str, *, min_id: str, epoch: int) -> None: ...

    async def sweep_expired_audits(
        self, scope: str, *, now: float, epoch: int, limit: int = 100
    ) -> SweepResult: ...

    async def reset_scope(self, scope: str, *, epoch: int) -> None:
        """Drop every record of the scope (window, pending, audits, held labels, counters,
        monitor state): its identity changed, they were made for another one."""
        ...

    async def load_threshold(self, scope: str) -> bytes | None: ...

    async def current(self, scope: str) -> tuple[int, bytes | None]:
        """The scope's incarnation (begun now if Redis holds none) and stored threshold."""
        ...

    async def save_threshold(
        self, scope: str, version: int, threshold: bytes, *, epoch: int
    ) -> bool: ...

    async def threshold_history(self, scope: str, *, count: int = 1000) -> list[bytes]: ...

    async def upper_bound(self, scope: str) -> tuple[int, int]: ...

    # Decisions stored with the covariate flags: (watched, of them with a low top score).
    async def covariate_counts(self, scope: str) -> tuple[int, int]: ...

    async def save_alert(self, scope: str, alert: bytes, *, epoch: int) -> None: ...

    async def alerts(self, scope: str, *, count: int = 1000) -> list[bytes]: ...

    # The outbox (service/outbox.py): alerts after an id, oldest first, with their ids;
    # the published marks; `start_outbox` sets the alert mark to the newest alert if unset.
    async def alerts_after(
        self, scope: str, after: str, *, count: int = 100
    ) -> list[tuple[str, bytes]]: ...

    async def load_outbox(self, scope: str) -> dict[str, str]: ...

    async def save_outbox(self, scope: str, marks: Mapping[str, str], *, epoch: int) -> None: ...

    async def start_outbox(self, scope: str, *, epoch: int) -> None: ...

    async def load_monitor(self, scope: str) -> dict[str, str]: ...

    async def save_monitor(self, scope: str, state: Mapping[str, str], *, epoch: int) -> None: ...

    async def hold_lease(
        self,
        scope: str,
        holder: str,
        *,
        ttl_s: float,
        last_epoch: int | None,
        incarnation: int = 0,
    ) -> Lease:
        """Take the scope's lease if it is free, or renew the caller's own; a new holder gets
        a new epoch (above every earlier one, even after Redis lost the counter), a holder
        whose lapsed lease nobody took keeps ``last_epoch``. Raises `StateLostError` when
        the scope's incarnation is not ``incarnation`` (0: unchecked)."""
        ...

    async def release_lease(self, scope: str, holder: str, *, epoch: int) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def redelivery_search(w: PendingWrite, cfg: StoreConfig, now: float) -> tuple[int, bool]:
    """How many slots, from the decision's back, hold a first decision of this query if it
    was made, and whether some of them have expired already (the redelivery horizon).

    A slot's records live until one slot after the feedback horizon of its last decision
    (``(slot + 2) * slot_s + pending_ttl_s``). A query without a send time searches its
    slot and the one before, as a redelivery by Kafka comes within seconds; one slot of
    margin before the send time allows for the producer's clock."""
    slot = int(w.decided_at // cfg.slot_s)
    if w.sent_at is None:
        return 2, False
    oldest_live = math.floor((now - cfg.pending_ttl_s) / cfg.slot_s - 2) + 1
    first = int(w.sent_at // cfg.slot_s) - 1
    return max(2, slot - max(first, oldest_live) + 1), first < oldest_live


@dataclass(frozen=True)
class StoreConfig:
    catalogues: Mapping[str, Sequence[str]]  # scope -> model names, in catalogue order
    pending_ttl_s: float
    window_size: int
    history_size: int = 10_000  # thresholds and alerts kept per scope
    # Pending records live in one-hour slots of their decision time, each split into buckets
    # of about 100 records (so Redis keeps them as listpacks): at least `min_buckets`, and
    # more when the previous slot held more. A slot expires `slot_s` after the horizon of
    # its last decision: the leader's sweep has that long to enter its incomplete audits.
    slot_s: float = 3600.0
    min_buckets: int = 256
    held_ttl_s: float = 300.0  # labels of a query not routed yet wait this long for it
