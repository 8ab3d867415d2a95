"""Calibration-core benchmark (docs/method.md sections 4 and 6).

Per window size it times, as the median of 5 runs after one warm-up:
(a) ``calibrate`` from scores and labels, (b) ``threshold_from_required`` from stored required
thresholds (``m*`` cache cleared before each run; the cached figure in its own column) and
(c) the naive ``oracle_threshold`` on a fixed 1,000-point grid, the baseline.

    python -m benchmarks.calibration [--sizes 10000,100000,1000000] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_info

from racer_online.core import (
    calibrate,
    certified_miss_count,
    entry_levels,
    oracle_threshold,
    required_thresholds,
    threshold_from_required,
)

N_MODELS = 9
ALPHA = DELTA = 0.1
GRID = np.linspace(0.0, 1.0, 1000)
RUNS, SLOW_RUNS, SLOW_S = 5, 3, 10.0  # 3 oracle runs only when one run exceeds 10 s
HEADERS = ("records", "rule / miss", "λ̂ / grid λ", "m*", "(a) calibrate", "(b) from t",
           "(b) cached", "(c) oracle", "(c)/(b)")  # fmt: skip


def synthetic_window(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels shaped like the shipped 9-LLM outcomes (~17% of queries unanswerable).

    A per-query ease and a per-model skill set a Beta mean; the router's score is the drawn
    base probability rounded to 2 decimals (ties), the label a Bernoulli of a noisy version.
    """
    rng = np.random.default_rng(seed)
    skill = rng.uniform(0.3, 1.2, N_MODELS)
    ease = rng.beta(0.5, 0.6, size=(n, 1))
    mean = np.clip(ease * skill, 0.02, 0.98)
    base = rng.beta(1.5 * mean, 1.5 * (1.0 - mean))
    noisy = np.clip(base + rng.normal(0.0, 0.1, base.shape), 0.0, 1.0)
    return np.round(base, 2), rng.random(base.shape) < noisy


def median_ms(fn: Callable[[], object], setup: Callable[[], object] = lambda: None) -> str:
    """Median wall time of ``fn`` in ms (``setup`` runs untimed before each run)."""

    def once() -> float:
        setup()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    runs = SLOW_RUNS if once() > SLOW_S else RUNS  # the first run is the warm-up
    ms = 1e3 * statistics.median(once() for _ in range(runs))
    return f"{ms:.2f}" + ("" if runs == RUNS else f" ({runs} runs)")


def bench_row(n: int, rule: str, miss: str) -> tuple[str, ...]:
    scores, labels = synthetic_window(n)
    opts = {"alpha": ALPHA, "delta": DELTA, "bound": "binomial"}
    t = required_thresholds(entry_levels(scores, rule=rule, miss=miss), labels, miss=miss)
    clear = certified_miss_count.cache_clear
    full = median_ms(lambda: calibrate(scores, labels, rule=rule, miss=miss, **opts), clear)
    incremental = median_ms(lambda: threshold_from_required(t, **opts), clear)
    cached = median_ms(lambda: threshold_from_required(t, **opts))
    oracle = median_ms(lambda: oracle_threshold(t, grid=GRID, **opts))
    found = threshold_from_required(t, **opts)
    lam_oracle = oracle_threshold(t, grid=GRID, **opts)
    speedup = float(oracle.split()[0]) / float(incremental)
    return (f"{n:,}", f"{rule} / {miss}", f"{found.lam_hat:.3f} / {lam_oracle:.3f}",
            f"{found.m_star:,}", full, incremental, cached, oracle, f"{speedup:.1f}x")  # fmt: skip


def machine_facts() -> dict[str, str]:
    with open("/proc/cpuinfo") as cpuinfo:
        first = cpuinfo.read().split("\n\n")[0].splitlines()
    cpu = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first if ":" in line)}
    blas = [
        f"{i['internal_api']} {i['version']} ({i.get('architecture')}), {i['num_threads']} threads"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    env = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu.get('model name')} (family {cpu.get('cpu family')} model {cpu.get('model')})",
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "python": f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}",
        "numpy SIMD dispatch": simd_features(),
        "BLAS": "; ".join(blas) or "not loaded",
        "BLAS env (as set up, unchanged)": ", ".join(f"{k}={os.getenv(k, 'unset')}" for k in env),
    }


def simd_features() -> str:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:
        return "?"
    return ", ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f)) or "baseline only"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated n")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    facts = machine_facts()
    console = Console(width=None if sys.stdout.isatty() else 140)
    for key, value in facts.items():
        console.print(f"[bold]{key}[/]: {value}")
    rows = [bench_row(n, "cumulative", "answerable") for n in sizes]
    rows += [bench_row(n, "threshold", "augmented") for n in sizes if n == 1_000_000]
    title = (
        f"Median ms of {RUNS} runs; {N_MODELS} models, alpha = delta = {ALPHA}, binomial bound, "
    )
    title += f"oracle grid of {GRID.size} points"
    table = Table(*HEADERS, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if args.markdown:
        print("\n" + "\n".join(f"- {key}: {value}" for key, value in facts.items()))
        print(f"\n{title}\n")
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * 2 + "---:|" * (len(HEADERS) - 2))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
