"""Prometheus metrics, all prefixed ``racer_`` and labelled by scope where they have one."""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("racer_decisions", "Routing decisions published.", ["scope"])
ABSTENTIONS = Counter("racer_abstentions", "Decisions that invoke no model.", ["scope"])
AUDITS = Counter("racer_audits", "Decisions drawn for audit (every model invoked).", ["scope"])
SET_SIZE = Histogram(
    "racer_set_size", "Models per decision.", ["scope"], buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32)
)
# Per model: in-set rate = MODEL_IN_SET / DECISIONS; price share = MODEL_PRICE / its sum.
MODEL_IN_SET = Counter(
    "racer_model_in_set", "Decisions whose set holds the model.", ["scope", "model"]
)
MODEL_PRICE = Counter(
    "racer_model_price", "Summed price of the model over the decisions that hold it.",
    ["scope", "model"],
)  # fmt: skip
ROUTE_SECONDS = Histogram("racer_route_batch_seconds", "Time to route one batch.")
FEEDBACK = Counter("racer_feedback", "Feedback events by outcome.", ["scope", "outcome"])
DLQ = Counter("racer_dlq", "Messages sent to the dead-letter topic.", ["topic", "reason"])

THRESHOLD = Gauge("racer_threshold", "Current threshold lam.", ["scope"])
THRESHOLD_VERSION = Gauge("racer_threshold_version", "Current threshold version.", ["scope"])
CERTIFIED = Gauge("racer_certified", "1 when the current threshold is certified.", ["scope"])
WINDOW_RECORDS = Gauge("racer_window_records", "Records in the calibration window.", ["scope"])
EMPIRICAL_RISK = Gauge("racer_empirical_risk", "Window miss rate at the threshold.", ["scope"])
RECALIBRATION_SECONDS = Histogram(
    "racer_recalibration_seconds", "Time to recalibrate one scope.", ["scope"]
)
EXACT_OUTCOMES = Counter(
    "racer_exact_outcomes", "Audited, fully graded live decisions (exact losses).", ["scope"]
)
EXACT_MISSES = Counter("racer_exact_misses", "Exact outcomes that were misroutes.", ["scope"])
REALISED_MISS_RATE = Gauge(
    "racer_realised_miss_rate", "Exact miss rate of the most recent audited decisions.", ["scope"]
)
EXPIRED_AUDITS = Counter(
    "racer_expired_audits",
    "Audited decisions whose grading never completed, entered as a worst case.",
    ["scope"],
)
LOST_AUDITS = Counter(
    "racer_lost_audits",
    "Audited decisions never completed whose record was gone before the sweep (not entered).",
    ["scope"],
)
AWAITING_AUDITS = Gauge(
    "racer_awaiting_audits",
    "Audited decisions awaiting their grading at the leader's last sweep (what a loss of "
    "Redis' state would take with it).",
    ["scope"],
)
STATE_RESETS = Counter(
    "racer_state_resets",
    "Times this worker found that Redis lost a scope's state (a new incarnation, or its "
    "threshold gone back) and dropped what it held of the scope.",
    ["scope"],
)
ALERTS = Counter("racer_alerts", "Alerts published.", ["scope", "kind"])
REDECIDED = Counter(
    "racer_redecided",
    "Queries decided again: sent before the redelivery horizon, their first decision gone.",
    ["scope"],
)
SCOPE_CHANGES = Counter(
    "racer_scope_changes",
    "Windows voided because the scope's models or base router changed (service/identity.py).",
    ["scope", "changed"],
)
LEADER_EPOCH = Gauge(
    "racer_leader_epoch",
    "The lease epoch this worker leads the scope under; 0 when it does not lead it.",
    ["scope"],
)
LEADER_FENCED = Counter(
    "racer_leader_fenced",
    "Leader writes the store refused: another worker held a newer lease epoch.",
    ["scope"],
)
OUTBOX_UNSENT = Gauge(
    "racer_outbox_unsent",
    "Thresholds and alerts Redis holds that the topics have not acknowledged (service/outbox.py).",
    ["scope"],
)
OUTBOX_SEND_FAILURES = Counter(
    "racer_outbox_send_failures", "Sends of thresholds and alerts that failed (sent again)."
)
CONSUMER_LAG = Gauge(
    "racer_consumer_lag",
    "Records between the group's committed offset and the end of each assigned partition.",
    ["topic", "partition"],
)
REBALANCES = Counter(
    "racer_rebalances", "Assignments this worker's consumer group gave it.", ["topic"]
)
COMMIT_FAILURES = Counter(
    "racer_commit_failures", "Batch offsets the broker did not commit.", ["topic"]
)
SKIPPED_COMMITS = Counter(
    "racer_skipped_commits",
    "Partition offsets not committed: the batch was fetched before a rebalance.",
    ["topic"],
)
BATCH_RETRIES = Counter(
    "racer_batch_retries", "Batches retried after a transient error (the partitions wait).",
    ["topic", "reason"],
)  # fmt: skip
PARKED = Counter(
    "racer_parked", "Records parked on a retry topic: not decidable yet (kafka/retries.py).",
    ["topic", "reason"],
)  # fmt: skip
ASSIGNED_PARTITION = Gauge(
    "racer_assigned_partition",
    "1 for each input partition this worker consumes (its consumer group's assignment).",
    ["topic", "partition"],
)


def count_decisions(
    decisions: Sequence[Mapping[str, Any]], prices: Mapping[str, Mapping[str, float]]
) -> None:
    """Count published decisions (fields of `DecisionMessage`); ``prices[scope][model]``."""
    by_scope: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_scope[d["scope"]].append(d)
    for scope, batch in by_scope.items():
        DECISIONS.labels(scope).inc(len(batch))
        ABSTENTIONS.labels(scope).inc(sum(d["abstain"] for d in batch))
        AUDITS.labels(scope).inc(sum(d["audit"] for d in batch))
        set_size = SET_SIZE.labels(scope)
        in_set: dict[str, int] = defaultdict(int)
        for d in batch:
            set_size.observe(len(d["models"]))
            for m in d["models"]:
                in_set[m] += 1
        for m, count in in_set.items():
            MODEL_IN_SET.labels(scope, m).inc(count)
            # .get: a redelivered decision may name a model the catalogue has since dropped.
            MODEL_PRICE.labels(scope, m).inc(count * prices.get(scope, {}).get(m, 0.0))
