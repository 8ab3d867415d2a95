"""Drift schedules of a replay or a backtest: phases of tasks (the default derived from the
data), the plan of rows that stream, and the exact figures of each phase and baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from racer_online import core
from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError
from racer_online.messages import DecisionMessage
from racer_online.scopes import ScopeConfig

ALL_ROWS = "all queries"  # the one phase of data without tasks


@dataclass(frozen=True)
class Phase:
    name: str
    tasks: tuple[str, ...]


DEFAULT_SCHEDULE = (
    Phase("knowledge QA", ("natural_qa", "trivia_qa", "mmlu", "commonsense_qa", "openbook_qa",
                           "arc_challenge")),
    Phase("math and code", ("gsm8k", "math", "mbpp", "human_eval", "agentverse-mgsm")),
    Phase("hard tasks", ("gpqa", "agentverse-logicgrid", "commongen")),
)  # fmt: skip


def default_schedule(outcomes: Outcomes) -> tuple[Phase, ...]:
    """The shipped three phases when the data holds their tasks; otherwise the data's tasks
    in order of first appearance, cut into at most three phases of consecutive tasks (one
    phase of every row when the data has no task column)."""
    tasks = outcomes.task_names
    if set(t for p in DEFAULT_SCHEDULE for t in p.tasks) <= set(tasks):
        return DEFAULT_SCHEDULE
    if not tasks:
        return (Phase(ALL_ROWS, ()),)
    groups = np.array_split(np.arange(len(tasks)), min(3, len(tasks)))
    return tuple(
        Phase(_phase_name([tasks[i] for i in group]), tuple(tasks[i] for i in group))
        for group in groups
    )


def _phase_name(tasks: Sequence[str]) -> str:
    return (
        ", ".join(tasks) if len(tasks) <= 3 else f"{tasks[0]} .. {tasks[-1]} ({len(tasks)} tasks)"
    )


def parse_schedule(text: str) -> tuple[Phase, ...]:
    """``"name=task,task;name=task"`` into phases (the ``--schedule`` option)."""
    phases = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, tasks = part.partition("=")
        if not name.strip() or not tasks.strip():
            raise InvalidInputError(f"schedule phase {part!r} is not name=task,task")
        phases.append(Phase(name.strip(), tuple(t.strip() for t in tasks.split(",") if t.strip())))
    if not phases:
        raise InvalidInputError("the schedule has no phase")
    return tuple(phases)


def check_schedule(outcomes: Outcomes, schedule: Sequence[Phase]) -> None:
    """One error naming the first unknown task and listing the data's tasks."""
    known = outcomes.task_names
    for phase in schedule:
        unknown = [t for t in phase.tasks if t not in known]
        if unknown:
            listed = ", ".join(known) if known else "none: the data has no task column"
            raise InvalidInputError(
                f"schedule phase {phase.name!r}: no task {unknown[0]!r} in {outcomes.name} "
                f"(its tasks: {listed})"
            )


@dataclass(frozen=True)
class Plan:
    """Which dataset rows stream, in order, and the phase of each."""

    rows: NDArray[np.intp]
    phase: NDArray[np.intp]
    phases: tuple[Phase, ...]


def plan(
    outcomes: Outcomes,
    schedule: Sequence[Phase] | None = None,
    *,
    rows: NDArray[np.intp] | None = None,
    per_phase: int | None = None,
    seed: int = 0,
) -> Plan:
    """Rows (by default all) grouped by phase, shuffled within each phase; the schedule
    defaults to `default_schedule` of the data."""
    schedule = default_schedule(outcomes) if schedule is None else schedule
    check_schedule(outcomes, schedule)
    rng = np.random.default_rng(seed)
    pool = np.arange(len(outcomes)) if rows is None else np.asarray(rows)
    chosen, phase_of = [], []
    for index, phase in enumerate(schedule):
        inside = (
            np.isin(outcomes.tasks[pool], phase.tasks) if phase.tasks else np.ones(len(pool), bool)
        )
        members = rng.permutation(pool[inside])[:per_phase]
        chosen.append(members)
        phase_of.append(np.full(len(members), index))
    return Plan(np.concatenate(chosen), np.concatenate(phase_of), tuple(schedule))


@dataclass(frozen=True)
class PhaseFigures:
    name: str
    n: int
    realised_miss_rate: float
    mean_set_size: float
    abstain_rate: float
    mean_price: float
    coverage: float  # share of queries whose set holds a correct model


def phase_figures(
    plan: Plan, chosen: NDArray[np.bool_], labels: NDArray[np.bool_], prices: NDArray[np.float64],
    *, miss: core.Miss,
) -> list[PhaseFigures]:  # fmt: skip
    """Exact figures of sets (n, K, or K + 1 with ⊥ last) against the full labels."""
    k = labels.shape[1]
    misses = core.set_misses(chosen, labels, miss=miss)
    sizes = chosen[:, :k].sum(axis=1)
    price = (chosen[:, :k] * prices).sum(axis=1)
    covered = np.asarray((chosen[:, :k] & labels).any(axis=1))
    out = []
    for index, phase in enumerate(plan.phases):
        at = plan.phase == index
        out.append(PhaseFigures(
            phase.name, int(at.sum()), float(misses[at].mean()), float(sizes[at].mean()),
            float((sizes[at] == 0).mean()), float(price[at].mean()), float(covered[at].mean()),
        ))  # fmt: skip
    return out


def baselines(
    plan: Plan, decisions: Sequence[DecisionMessage], labels: NDArray[np.bool_],
    scope: ScopeConfig, *, static_n: int, alpha: float, delta: float,
) -> dict[str, list[PhaseFigures]]:  # fmt: skip
    """Static RACER (calibrated once on the first ``static_n`` queries, before any shift),
    top-1 by base score, all models and the cheapest model, on the same stream."""
    models, prices = scope.model_names, np.array(scope.prices)
    scores = np.array([[d.scores[m] for m in models] for d in decisions])
    given = np.array([np.nan if d.p_abstain is None else d.p_abstain for d in decisions])
    p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
    levels = core.entry_levels(
        scores, rule=scope.rule, miss=scope.miss, p_abstain=p_abstain, prices=prices
    )
    first = min(static_n, int((plan.phase == 0).sum()))
    required = core.required_thresholds(levels[:first], labels[:first], miss=scope.miss)
    static = core.threshold_from_required(required, alpha=alpha, delta=delta, bound=scope.bound)
    n, width = len(decisions), levels.shape[1]
    top1, cheapest = np.zeros((n, width), bool), np.zeros((n, width), bool)
    top1[np.arange(n), scores.argmax(axis=1)] = True
    cheapest[:, int(np.argmin(prices))] = True
    sets = {"static": core.members(levels, static.lam_hat), "top1": top1,
            "all": np.ones((n, width), bool), "cheapest": cheapest}  # fmt: skip
    return {
        name: phase_figures(plan, s, labels, prices, miss=scope.miss) for name, s in sets.items()
    }
