"""Where state lives: Redis in production, an in-memory twin in service tests."""

from racer_online.store.base import (
    FeedbackOutcome,
    LabelWrite,
    Lease,
    PendingWrite,
    RouteResult,
    Store,
    StoreConfig,
    StreamId,
    SweepResult,
    WindowEntry,
)
from racer_online.store.memory import MemoryStore
from racer_online.store.redis import RedisStore

__all__ = [
    "FeedbackOutcome",
    "LabelWrite",
    "Lease",
    "MemoryStore",
    "PendingWrite",
    "RedisStore",
    "RouteResult",
    "Store",
    "StoreConfig",
    "StreamId",
    "SweepResult",
    "WindowEntry",
]
