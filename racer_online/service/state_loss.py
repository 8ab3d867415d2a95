"""What a worker does when Redis lost a scope's state (FLUSHALL, a restart without
persistence, a replaced node, a replica promoted without the last writes).

Redis tells it: every script that acts on a worker's memory of a scope (routes, feedback,
the leader's lease) compares the incarnation that memory comes from with the scope's
current one (store/lua/incarnation.lua) and refuses the call before it changes anything;
every threshold poll reads the incarnation too, and a stored threshold older than the one
the worker routes on means the state went back. Then the worker drops what it holds of the
scope: it routes at lam = 1 until a threshold computed on the records Redis holds now
certifies (`/ready` is false meanwhile), the leader reads the window afresh under a new
lease epoch (epochs are above every earlier one, store/lua/lease.lua), the audits that were
awaiting their grading are counted as lost, and the leader raises a ``state_lost`` alert.
"""

from __future__ import annotations

import logging

from racer_online.messages import AlertMessage
from racer_online.service import metrics
from racer_online.service.scope import ScopeState

log = logging.getLogger(__name__)


def survive(scope: ScopeState, found: int, *, why: str, awaiting_audits: int) -> AlertMessage:
    """Drop what this worker holds of ``scope``; the alert for the leader to raise."""
    held = scope.threshold
    window_records = len(scope.window)
    metrics.STATE_RESETS.labels(scope.name).inc()
    metrics.LOST_AUDITS.labels(scope.name).inc(awaiting_audits)
    metrics.AWAITING_AUDITS.labels(scope.name).set(0)
    log.warning(
        "scope %s: Redis lost the scope's state (%s): dropped threshold v%d lam=%.4f %s; "
        "routing on every model until a threshold of the new state certifies",
        scope.name, why, held.version, held.lam, held.status,
    )  # fmt: skip
    before = scope.incarnation
    scope.reset(found)
    return AlertMessage(
        scope=scope.name, kind="state_lost",
        message=f"Redis lost the scope's state ({why}): routing on every model until a "
        f"threshold of the records Redis holds now certifies; {awaiting_audits} audits "
        "awaiting their grading were lost",
        evidence={"incarnation_before": before, "incarnation": found, "why": why,
                  "threshold_version_dropped": held.version, "lam_dropped": held.lam,
                  "status_dropped": held.status, "window_records_in_memory": window_records,
                  "awaiting_audits_lost": awaiting_audits},
    )  # fmt: skip
