"""Drift schedules of a replay: phases of tasks, the default derived from the data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from racer_online.errors import InvalidInputError
from racer_online.offline.datasets import Outcomes

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
