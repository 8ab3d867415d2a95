"""Backtest: the online system over an outcomes dataset, in simulated time.

It drives the worker's own code, never a copy of its loop: `RacerService` routes each
batch and records feedback, its `Leader` reads the window, runs the drift monitor and
recalibrates, all on the in-memory store with a simulated clock. Query ``i`` arrives at
``i / rate`` seconds; its feedback (every model for an audited decision, the invoked
models otherwise) arrives ``feedback_lag`` queries later; the leader ticks after every
batch. The figures are exact: every decision against the dataset's full labels.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import SecretStr

from racer_online import core
from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError
from racer_online.messages import DecisionMessage, FeedbackMessage, QueryMessage
from racer_online.offline import schedules
from racer_online.routers.base import Router
from racer_online.scopes import ScopeConfig
from racer_online.service import RacerService, store_config
from racer_online.service.decisions import Routed
from racer_online.settings import Settings
from racer_online.store import MemoryStore

SCOPE = "default"
SAFE_MARGIN = 0.02  # a threshold is safe for a phase when its risk there is <= alpha + this
NO_MONITOR = {"monitor": False}  # the sliding-window baseline


@dataclass(frozen=True)
class Scored:
    """Every candidate row of the dataset with its base-router scores, in catalogue order."""

    outcomes: Outcomes
    rows: NDArray[np.intp]  # dataset rows the router did not train on
    scores: NDArray[np.float64]  # (len(rows), K)
    p_abstain: NDArray[np.float64]  # (len(rows),), NaN where the router gives none
    models: tuple[str, ...]

    def labels(self, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        columns = [self.outcomes.models.index(m) for m in self.models]
        return self.outcomes.labels[rows][:, columns]


def score_rows(
    outcomes: Outcomes, router: Router, rows: NDArray[np.intp] | None, models: Sequence[str]
) -> Scored:
    """Score the rows once: every seed replays the same scores in its own order."""
    pool = np.arange(len(outcomes)) if rows is None else np.asarray(rows)
    missing = sorted(set(models) - set(outcomes.models))
    if missing:
        raise InvalidInputError(f"the scope has model {missing[0]!r}, not in the data")
    queries = [QueryMessage(query_id=str(r), text=outcomes.questions[r]) for r in pool]
    scored = router.score(queries).select(models)
    p_abstain = np.full(len(pool), np.nan) if scored.p_abstain is None else scored.p_abstain
    return Scored(outcomes, pool, scored.scores, p_abstain, tuple(models))


@dataclass
class Run:
    """One seed's stream through the system: the decisions and what the leader did."""

    plan: schedules.Plan
    decisions: list[DecisionMessage] = field(default_factory=list)
    alarms: list[int] = field(default_factory=list)  # query index at the tick that raised it
    updates: list[int] = field(default_factory=list)  # query index of each threshold update


@dataclass(frozen=True)
class Pacing:
    """Simulated time: queries per second, the feedback delay and the route batch."""

    feedback_lag: int = 20  # queries between a decision and its labels
    rate: float = 10.0  # queries per simulated second
    batch: int = 10  # queries per route call; the leader ticks after each


class SimulatedClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.start = self.now = start

    def __call__(self) -> float:
        return self.now


async def run_stream(
    settings: Settings, scored: Scored, the_plan: schedules.Plan, *, pacing: Pacing, run_id: str,
    ungraded: Callable[[NDArray[np.bool_]], bool] | None = None,
) -> Run:  # fmt: skip
    """Route the plan's queries batch by batch, grade them ``feedback_lag`` queries later.

    ``ungraded``: a grader who never grades the queries whose labels it picks (missing not
    at random), so that their audits reach the window only through the leader's sweep."""
    clock = SimulatedClock()
    service = RacerService(settings, MemoryStore(store_config(settings), clock=clock), clock=clock)
    at = {int(r): i for i, r in enumerate(scored.rows)}
    index = np.array([at[int(r)] for r in the_plan.rows])
    labels = scored.labels(the_plan.rows)
    models, n = scored.models, len(the_plan.rows)
    run, graded = Run(the_plan), 0
    for start in range(0, n, pacing.batch):
        end = min(start + pacing.batch, n)
        clock.now = clock.start + end / pacing.rate
        queries = [_query(scored, index[i], f"{run_id}-{i}") for i in range(start, end)]
        for result in await service.route(queries):
            assert isinstance(result, Routed), result
            run.decisions.append(result.decision)
        due = max(graded, end - pacing.feedback_lag)
        events = [
            _grades(run.decisions[j], labels[j], models)
            for j in range(graded, due)
            if ungraded is None or not ungraded(labels[j])
        ]
        await service.record_feedback([e for e in events if e is not None])
        graded = due
        updates = await service.leader.recalibrate_due()
        run.alarms += [end - 1 for a in updates.alerts if a.kind == "drift"]
        run.updates += [end - 1] * len(updates.thresholds)
    return run


def _query(scored: Scored, i: int, query_id: str) -> QueryMessage:
    p = scored.p_abstain[i]
    return QueryMessage(
        query_id=query_id, scope=SCOPE, p_abstain=None if np.isnan(p) else float(p),
        scores=dict(zip(scored.models, scored.scores[i].tolist(), strict=True)),
    )  # fmt: skip


def _grades(
    decision: DecisionMessage, labels: NDArray[np.bool_], models: Sequence[str]
) -> FeedbackMessage | None:
    graded = models if decision.audit else decision.models
    if not graded:
        return None
    values = {m: int(labels[models.index(m)]) for m in graded}
    return FeedbackMessage(query_id=decision.query_id, scope=SCOPE, labels=values)


def figures(run: Run, scored: Scored, config: ScopeConfig) -> dict[str, Any]:
    """Exact per-phase figures of one run, recomputable from its decisions alone."""
    the_plan, models = run.plan, scored.models
    labels = scored.labels(the_plan.rows)
    chosen = chosen_sets(run.decisions, models)
    prices = np.array(config.prices)
    sizes = chosen[:, : len(models)].sum(axis=1)
    audit = np.array([d.audit for d in run.decisions])
    extra = np.where(audit, len(models) - sizes, 0)
    required = required_of(run.decisions, labels, config)
    lam = np.array([d.lam for d in run.decisions])
    phases = []
    for k, figs in enumerate(schedules.phase_figures(the_plan, chosen, labels, prices,
                                                  miss=config.miss)):  # fmt: skip
        at = the_plan.phase == k
        phases.append(asdict(figs) | {
            "extra_gradings_per_query": float(extra[at].mean()),
            "alarms": int(np.isin(np.flatnonzero(at), run.alarms).sum()),
            "threshold_updates": int(np.isin(np.flatnonzero(at), run.updates).sum()),
            "queries_to_safe": queries_to_safe(
                lam[at], required[at], safe=config.alpha + SAFE_MARGIN
            ),
            **over_alpha(lam[at], required[at], alpha=config.alpha),
        })  # fmt: skip
    return {"phases": phases, "first_1000_mean_set_size": float(sizes[:1000].mean())}


def chosen_sets(decisions: Sequence[DecisionMessage], models: Sequence[str]) -> NDArray[np.bool_]:
    """(n, K + 1): the models of each decision, then its unanswerable flag."""
    chosen = np.zeros((len(decisions), len(models) + 1), bool)
    position = {m: j for j, m in enumerate(models)}
    for i, d in enumerate(decisions):
        chosen[i, [position[m] for m in d.models]] = True
        chosen[i, -1] = d.flag_unanswerable
    return chosen


def required_of(
    decisions: Sequence[DecisionMessage], labels: NDArray[np.bool_], config: ScopeConfig
) -> NDArray[np.float64]:
    """Each query's required threshold, from the scores its decision carries."""
    models = config.model_names
    scores = np.array([[d.scores[m] for m in models] for d in decisions])
    given = np.array([np.nan if d.p_abstain is None else d.p_abstain for d in decisions])
    p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
    levels = core.entry_levels(scores, rule=config.rule, miss=config.miss, p_abstain=p_abstain,
                               prices=np.array(config.prices))  # fmt: skip
    return core.required_thresholds(levels, labels, miss=config.miss)


def exact_risk(lam: NDArray[np.float64], required: NDArray[np.float64]) -> NDArray[np.float64]:
    """The exact risk of each threshold over a phase's queries: the share with lam < t."""
    t = np.sort(required)
    return (t.size - np.searchsorted(t, lam, side="right")) / t.size


def queries_to_safe(lam: NDArray[np.float64], required: NDArray[np.float64], *, safe: float) -> int:
    """Queries into a phase after which every decision's threshold is safe for the phase:
    its exact risk over all the phase's queries is at most ``safe``."""
    unsafe = np.flatnonzero(exact_risk(lam, required) > safe)
    return int(unsafe[-1] + 1) if unsafe.size else 0


def over_alpha(
    lam: NDArray[np.float64], required: NDArray[np.float64], *, alpha: float
) -> dict[str, float]:
    """What a user reads into "P(miss) <= alpha": the share of a phase's decisions made
    under a threshold whose exact risk on the phase exceeds alpha, and whether any was
    (1.0 or 0.0: its mean over seeds is the share of seeds)."""
    over = exact_risk(lam, required) > alpha
    return {"over_alpha_share": float(over.mean()), "ever_over_alpha": float(over.any())}


STATIONARY = "stationary"  # --schedule: one phase of every query, shuffled


def schedule_of(text: str | None) -> tuple[schedules.Phase, ...] | None:
    """The ``--schedule`` option's phases; None: the data's tasks (`default_schedule`)."""
    if not text:
        return None
    if text.strip() == STATIONARY:
        return (schedules.Phase(STATIONARY, ()),)
    return schedules.parse_schedule(text)


def settings_for(models: Sequence[str], prices: Sequence[float], **overrides: Any) -> Settings:
    """Settings with every default but the overrides, and one scope of the data's models."""
    scope = overrides.pop("scope", {})
    lines = [f"[scopes.{SCOPE}]"] + [f"{k} = {v!r}" for k, v in scope.items()]
    lines += [f"[scopes.{SCOPE}.models]"]
    lines += [f'"{m}" = {{ price = {float(p)!r} }}' for m, p in zip(models, prices, strict=True)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scopes.toml"
        path.write_text("\n".join(lines) + "\n")
        settings = Settings.load(_env_file=None, scopes_file=path, **overrides)
        settings.scopes  # noqa: B018  # read while the file exists
    return settings


def backtest(
    settings: Settings, scored: Scored, schedule: Sequence[schedules.Phase] | None, *,
    seeds: int = 10, per_phase: int | None = None, pacing: Pacing = Pacing(),
    static_n: int = 500,
) -> dict[str, Any]:  # fmt: skip
    """Every seed through the system and through the baselines; mean and worst seed."""
    config = settings.scopes[SCOPE]
    plain = settings.model_copy(update=NO_MONITOR)
    online, window, others = [], [], []
    for seed in range(seeds):
        keyed = {"audit_key": SecretStr(f"backtest-{seed}")}  # each seed its own audit draw
        settings, plain = settings.model_copy(update=keyed), plain.model_copy(update=keyed)
        the_plan = schedules.plan(scored.outcomes, schedule, rows=scored.rows,
                               per_phase=per_phase, seed=seed)  # fmt: skip
        run = asyncio.run(run_stream(settings, scored, the_plan, run_id=f"s{seed}", pacing=pacing))
        online.append(figures(run, scored, config))
        plain_run = asyncio.run(
            run_stream(plain, scored, the_plan, run_id=f"w{seed}", pacing=pacing)
        )
        window.append(figures(plain_run, scored, config)["phases"])
        labels = scored.labels(the_plan.rows)
        fixed = schedules.baselines(the_plan, run.decisions, labels, config, static_n=static_n,
                                 alpha=config.alpha, delta=config.delta)  # fmt: skip
        others.append({name: [asdict(f) for f in figs] for name, figs in fixed.items()})
    baselines = {"sliding window": mean_phases(window)}
    baselines |= {name: mean_phases([o[name] for o in others]) for name in others[0]}
    return {
        "alpha": config.alpha, "delta": config.delta, "audit_rate": settings.audit_rate,
        "feedback_lag": pacing.feedback_lag, "seeds": seeds,
        "phases": mean_phases([o["phases"] for o in online]),
        "first_1000_mean_set_size": float(np.mean([o["first_1000_mean_set_size"] for o in online])),
        "worst_first_1000_mean_set_size": max(o["first_1000_mean_set_size"] for o in online),
        "baselines": baselines,
    }  # fmt: skip


def mean_phases(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per phase: the mean of every figure over seeds, the worst miss rate and recovery."""
    out = []
    for seeds in zip(*per_seed, strict=True):
        phase = {k: float(np.mean([s[k] for s in seeds])) for k, v in seeds[0].items()
                 if isinstance(v, int | float) and k != "n"}  # fmt: skip
        phase |= {"name": seeds[0]["name"], "n": seeds[0]["n"]}
        phase["worst_realised_miss_rate"] = max(s["realised_miss_rate"] for s in seeds)
        if "queries_to_safe" in seeds[0]:
            phase["worst_queries_to_safe"] = max(s["queries_to_safe"] for s in seeds)
        out.append(phase)
    return out
