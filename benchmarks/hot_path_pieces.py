"""The pieces of the route hot path, each beside what it replaced (docs/benchmarks.md,
"The route hot path"): µs per query, median of 5 timeit repeats.

    .venv/bin/python -m benchmarks.hot_path_pieces
"""

from __future__ import annotations

import statistics
import timeit
import uuid
from dataclasses import make_dataclass
from typing import Any, NamedTuple

from aiokafka.partitioner import DefaultPartitioner

from racer_online.kafka import partitioning

BATCH = 500
PARTITIONS = list(range(4))


# The same ten fields (six ints, three floats, bytes) as the pending record, both ways.
FIELDS = [(name, int) for name in "abcdef"] + [(name, float) for name in "ghi"] + [("j", bytes)]
FrozenRecord = make_dataclass("FrozenRecord", FIELDS, frozen=True)
TupleRecord = NamedTuple("TupleRecord", FIELDS)  # type: ignore[misc]


COMMON: dict[str, Any] = dict(
    query_id="", scope="default", models=[], abstain=False, flag_unanswerable=False,
    audit=False, audit_rate=0.1, lam=0.35, threshold_version=3, threshold_status="certified",
    alpha=0.1, delta=0.1, bound="binomial", scores={}, p_abstain=None, decided_at=1.0,
)  # fmt: skip


def built_anew() -> dict[str, Any]:
    return dict(
        query_id="q1", scope="default", models=["a"], abstain=False, flag_unanswerable=False,
        audit=False, audit_rate=0.1, lam=0.35, threshold_version=3,
        threshold_status="certified", alpha=0.1, delta=0.1, bound="binomial", scores={},
        p_abstain=None, decided_at=1.0,
    )  # fmt: skip


def copied() -> dict[str, Any]:
    return {
        **COMMON, "query_id": "q1", "models": ["a"], "abstain": False,
        "flag_unanswerable": False, "audit": False, "scores": {}, "p_abstain": None,
    }  # fmt: skip


def per_call_us(fn: Any, *, per: int = 1, number: int = 2000) -> float:
    runs = timeit.repeat(fn, number=number, repeat=5)
    return statistics.median(runs) / number / per * 1e6


def main() -> None:
    short = [f"q{i:09d}".encode() for i in range(BATCH)]
    uuids = [str(uuid.uuid4()).encode() for _ in range(BATCH)]
    aiokafka = DefaultPartitioner()
    rows = [
        ("a 10-field record: frozen dataclass", per_call_us(lambda: FrozenRecord(*range(9), b""))),
        ("a 10-field record: NamedTuple", per_call_us(lambda: TupleRecord(*range(9), b""))),
        ("a decision's fields: built anew", per_call_us(built_anew)),
        ("a decision's fields: the batch's copied", per_call_us(copied)),
    ]
    for name, keys in (("10-byte key", short), ("UUID key", uuids)):
        rows.append((f"{name}: aiokafka's partitioner", per_call_us(
            lambda keys=keys: [aiokafka(k, PARTITIONS, PARTITIONS) for k in keys],
            per=BATCH, number=20)))  # fmt: skip
        rows.append((f"{name}: batch murmur2", per_call_us(
            lambda keys=keys: partitioning.partitions(keys, len(PARTITIONS)),
            per=BATCH, number=20)))  # fmt: skip
    print("| piece | µs per query |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
