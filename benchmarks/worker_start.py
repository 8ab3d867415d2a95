"""Worker start: from ``python -m racer_online worker`` to its partitions assigned and to its
first decision, at the production group settings (no short test timeouts), per broker.

Each repetition starts a worker on topics, a scope and groups of its own (new groups, as a
first deployment has), reads the times its own log gives (the start line, then "assigned
partitions" of each batch consumer) and sends one query at a time until a decision comes
back. The interpreter's own start (imports) is measured apart, as it depends on the load.

    python -m benchmarks.worker_start [--broker apache,tansu] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from datetime import datetime

from benchmarks._harness import Deployment, Traffic, services, wait_ready
from benchmarks._machine import cpu_pressure, median
from racer_online.testing import FAST_GROUP_ENV, until

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_times(text: str, marker: str) -> list[float]:
    """Unix times of the log lines holding ``marker``."""
    found = []
    for line in text.splitlines():
        stamp = STAMP.match(line)
        if stamp and marker in line:
            found.append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def import_seconds() -> float:
    """How long the interpreter takes to load the CLI: the part of a start no setting moves."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import racer_online.apps.cli"], check=True)
    return time.monotonic() - started


async def one_start(kind: str) -> dict[str, float]:
    with services(kind) as svc:
        dep = Deployment(svc, label="start")
        for key in FAST_GROUP_ENV:  # the production defaults, not the tests' 2 s timeouts
            dep.env.pop(key, None)
        await dep.create_topics()
        started = time.time()
        dep.start_worker()
        try:
            first = await wait_ready(dep, Traffic(dep.scope), timeout=120)
            log = dep.log_path(0)

            def both_assigned() -> list[float]:
                times = log_times(log.read_text(errors="replace"), "assigned partitions")
                return times if len(times) >= 2 else []

            assigned = await until(both_assigned, timeout=30, what="both groups' assignment")
        finally:
            dep.stop_worker()
            dep.delete_keys()
    return {"assigned_s": max(assigned) - started, "first_decision_s": first}


async def run(args: argparse.Namespace) -> None:
    print(f"CPU pressure at start: {cpu_pressure()}")
    imports = [import_seconds() for _ in range(args.reps)]
    each = ", ".join(f"{s:.1f}" for s in imports)
    print(f"loading the CLI (python -c 'import racer_online.apps.cli'): "
          f"median {median(imports):.1f} s of {each}")  # fmt: skip
    rows = []
    for kind in args.broker.split(","):
        runs = [await one_start(kind) for _ in range(args.reps)]
        for key in ("assigned_s", "first_decision_s"):
            values = [r[key] for r in runs]
            rows.append((kind, key, median(values), values))
    print("\n| broker | from the process start to | median, s | runs, s |\n|---|---|---:|---|")
    for kind, key, mid, values in rows:
        what = "both groups assigned" if key == "assigned_s" else "the first decision back"
        print(f"| {kind} | {what} | {mid:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nCPU pressure at end: {cpu_pressure()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="apache,tansu", help="comma-separated: apache, tansu")
    parser.add_argument("--reps", type=int, default=3, help="starts per broker")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
