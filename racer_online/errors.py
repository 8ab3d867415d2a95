"""Exceptions of racer-online.

    RacerError
    ├── InvalidInputError (also ValueError)   bad arrays, parameters or records
    │   ├── RecordsFormatError                 a records CSV that cannot be read
    │   └── MessageError                       a topic payload that fails its schema
    ├── ConfigError (also ValueError)          bad settings or scopes file
    ├── StoreUnavailableError                  Redis cannot serve now (retry later)
    │   └── StateLostError                     Redis lost a scope's state (reset, retry)
    ├── StoreFailedError                       Redis refused a command for good (stop)
    └── FencedError                            a leader write under a superseded lease epoch

Every message names the problem in one line, so the CLI can print it as it is.
"""


class RacerError(Exception):
    """Base class of every error racer-online raises on purpose."""


class InvalidInputError(RacerError, ValueError):
    """Input that violates the method's preconditions (shapes, ranges, names)."""


class RecordsFormatError(InvalidInputError):
    """A records file whose header or rows do not follow the records format."""


class ConfigError(RacerError, ValueError):
    """Settings or a scopes file that cannot be used."""


class StoreUnavailableError(RacerError):
    """Redis (or the store standing in for it) cannot serve right now: unreachable, still
    loading its data, full, read-only after a failover, a cluster without a majority. The
    same call succeeds later: routing goes on in memory, feedback waits and retries."""


class StateLostError(StoreUnavailableError):
    """Redis no longer holds the state a worker's memory of a scope comes from: the scope's
    incarnation changed (FLUSHALL, a restart without persistence, a replaced node) or its
    state went back (a replica promoted without the last writes). Nothing was written; the
    worker drops what it holds of the scope (lam = 1 until a threshold of the new state
    certifies) and retries. Unhandled, it is an outage: the batch is retried."""

    def __init__(self, scope: str, found: int, message: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.found = found  # the scope's incarnation now


class StoreFailedError(RacerError):
    """Redis answered with an error that no retry cures (a script error, an unknown
    command): the worker stops with this one line rather than loop on the same batch."""


class FencedError(RacerError):
    """The store refused a leader write: its lease epoch is no longer the scope's current
    one, so another worker leads the scope now. The write did not happen; the leader steps
    down for that scope and re-reads its state if it ever leads it again."""
