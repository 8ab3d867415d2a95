"""How fast the online loop follows the demo's drift, offline, for several settings.

Replays the demo's stream (held-out queries, text-router scores, three phases) through the
pure core: every query is decided at the current threshold; its exact outcome reaches the
window ``lag`` queries later (feedback delay); the drift monitor and the recalibration
trigger act as in the worker. Prints the misroute rate and mean set size per phase.

    python -m benchmarks.drift_lag [--router artifacts/demo/router.json] [--seeds 3]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from racer_online import core
from racer_online.apps import replay
from racer_online.offline.datasets import load_outcomes
from racer_online.routers.files import load_router


@dataclass(frozen=True)
class Loop:
    audit: float
    k_test: int
    n_recent: int
    delta_monitor: float
    window: int
    every: int = 25  # recalibrate after this many new records
    lag: int = 20  # queries between a decision and its graded outcome

    def label(self) -> str:
        return (f"audit {self.audit}, test {self.n_recent} every {self.k_test} at "
                f"{self.delta_monitor}, window {self.window}, lag {self.lag}")  # fmt: skip


SETTINGS = (
    Loop(0.1, 50, 200, 0.001, 10_000),  # production defaults
    Loop(0.5, 50, 200, 0.001, 10_000),
    Loop(0.5, 10, 60, 0.01, 1_000),
    Loop(1.0, 10, 60, 0.01, 1_000),  # the demo
    Loop(1.0, 10, 60, 0.01, 1_000, lag=40),
)


def simulate(t: np.ndarray, levels: np.ndarray, loop: Loop, seed: int, alpha: float = 0.1):
    """Per query: missed, set size."""
    rng = np.random.default_rng(seed)
    audited = rng.uniform(size=len(t)) < loop.audit
    lam, window, recent, since, new = core.FALLBACK_LAM, [], [], 0, 0
    lam_at = np.empty(len(t))
    for i in range(len(t)):
        lam_at[i] = lam
        j = i - loop.lag
        if j < 0 or not audited[j]:
            continue
        window.append(t[j])
        recent.append(lam_at[j] < t[j])
        window, recent = window[-loop.window :], recent[-loop.n_recent :]
        since, new, drift = since + 1, new + 1, False
        if since >= loop.k_test:
            since = 0
            test = core.drift_test(np.array(recent), alpha=alpha, delta_monitor=loop.delta_monitor)
            if test.drift:
                window, recent, drift = window[-loop.n_recent :], [], True
        if drift or new >= loop.every:
            new = 0
            found = core.threshold_from_required(np.array(window), alpha=alpha, delta=0.1)
            certified_or_fallback = found.lam_hat if found.certified else core.FALLBACK_LAM
            lam = certified_or_fallback if found.certified or drift or lam == 1 else lam
    return lam_at < t, (levels <= lam_at[:, None]).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", type=Path, default=Path("artifacts/demo/router.json"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    outcomes = load_outcomes()
    plan = replay.plan(outcomes, rows=replay.held_out_rows(outcomes, args.router))
    routed = load_router(args.router).score_texts([outcomes.questions[i] for i in plan.rows])
    levels = core.entry_levels(routed.scores, p_abstain=routed.p_abstain)
    t = core.required_thresholds(levels, outcomes.labels[plan.rows])
    table = Table("settings", *(p.name for p in plan.phases),
                  title="misroute rate / mean set size per phase (worst of seeds)")  # fmt: skip
    for loop in SETTINGS:
        runs = [simulate(t, levels, loop, seed) for seed in range(args.seeds)]
        cells = []
        for index in range(len(plan.phases)):
            at = plan.phase == index
            worst = max(float(missed[at].mean()) for missed, _ in runs)
            size = np.mean([sizes[at].mean() for _, sizes in runs])
            cells.append(f"{worst:.3f} / {size:.2f}")
        table.add_row(loop.label(), *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
