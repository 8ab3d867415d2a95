"""Replay a real outcomes dataset through a running system, phase by phase.

Queries go to the queries topic; each decision that comes back is graded from the
dataset's labels after a random delay, the way a grader would: every model for an audited
decision, the invoked models otherwise. The per-phase figures are computed from the
decisions the system actually published; the baselines are computed on the same stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from numpy.typing import NDArray

from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError, RacerError
from racer_online.kafka import clients
from racer_online.messages import DecisionMessage, FeedbackMessage, QueryMessage
from racer_online.offline.schedules import (
    DEFAULT_SCHEDULE,
    Phase,
    PhaseFigures,
    Plan,
    baselines,
    parse_schedule,
    phase_figures,
    plan,
)
from racer_online.routers.files import router_paths
from racer_online.scopes import ModelConfig, ScopeConfig
from racer_online.settings import Settings

__all__ = [
    "DEFAULT_SCHEDULE", "Phase", "PhaseFigures", "Plan", "baselines", "parse_schedule",
    "phase_figures", "plan", "replay",
]  # fmt: skip

IDLE_TIMEOUT_S = 60.0  # no decision for this long: the system is not answering


async def replay(
    settings: Settings,
    outcomes: Outcomes,
    the_plan: Plan,
    *,
    scope: str = "default",
    rate: float = 200.0,
    delay_mean_s: float = 0.2,
    static_n: int = 500,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    prices: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Stream the plan through the running system and return the replay's JSON object.
    ``prices`` (per model) price the figures and the cheapest baseline instead of the
    scope's prices; the worker routes at the scope's either way."""
    config = settings.scopes.get(scope)
    if config is None:
        raise InvalidInputError(f"unknown scope {scope!r}")
    if prices is not None:
        unpriced = [m for m in config.model_names if m not in prices]
        if unpriced:
            raise InvalidInputError(f"the prices give no price for model {unpriced[0]!r}")
        priced = {m: ModelConfig(price=prices[m]) for m in config.model_names}
        config = config.model_copy(update={"models": priced})
    missing = set(config.model_names) - set(outcomes.models)
    if missing:
        raise InvalidInputError(
            f"scope {scope!r} has model {sorted(missing)[0]!r}, not in {outcomes.name}: point "
            "RACER_SCOPES_FILE at a scopes file of the data's models (demo --data writes one)"
        )
    await clients.check_reachable(settings)
    run = _Run(settings, outcomes, the_plan, scope, config, seed=seed, on_progress=on_progress)
    decisions = await run.stream(rate=rate, delay_mean_s=delay_mean_s)
    chosen = np.zeros((len(decisions), len(config.model_names) + 1), bool)
    for i, d in enumerate(decisions):
        chosen[i, [config.model_names.index(m) for m in d.models]] = True
        chosen[i, -1] = d.flag_unanswerable
    priced_at = np.array(config.prices)
    online = phase_figures(the_plan, chosen, run.labels, priced_at, miss=config.miss)
    others = baselines(the_plan, decisions, run.labels, config, static_n=static_n,
                       alpha=config.alpha, delta=config.delta)  # fmt: skip
    return {
        "alpha": config.alpha,
        "delta": config.delta,
        "phases": [asdict(f) for f in online],
        "baselines": {name: [asdict(f) for f in figs] for name, figs in others.items()},
        "run": run.id,  # query ids are replay-<run>-<position>
        "phase_starts": run.phase_starts,
        "thresholds": sorted({(d.threshold_version, d.lam) for d in decisions}),
    }


class _Run:
    """One replay on the stream: send the plan's queries at a rate, read their decisions back
    and grade each after a random delay, as a grader would."""

    def __init__(
        self, settings: Settings, outcomes: Outcomes, the_plan: Plan, scope: str,
        config: ScopeConfig, *, seed: int, on_progress: Callable[[int, int], None] | None,
    ) -> None:  # fmt: skip
        self.settings, self.outcomes, self.plan = settings, outcomes, the_plan
        self.scope, self.config, self.on_progress = scope, config, on_progress
        columns = [outcomes.models.index(m) for m in config.model_names]
        self.labels = outcomes.labels[the_plan.rows][:, columns]
        self.id = uuid.uuid4().hex[:8]
        self.ids = [f"replay-{self.id}-{i}" for i in range(len(the_plan.rows))]
        self.position = {qid: i for i, qid in enumerate(self.ids)}
        self.decided: dict[int, DecisionMessage] = {}
        self.rng = np.random.default_rng(seed)
        self.grading: set[asyncio.Task[None]] = set()
        self.phase_starts: list[dict[str, Any]] = []  # when each phase's first query was sent
        self.delay_mean_s = 0.0
        self.producer = clients.producer(settings, linger_ms=5)
        self.consumer = clients.consumer(
            settings, settings.topics.decisions, group_id=f"racer-replay-{self.id}"
        )

    async def stream(self, *, rate: float, delay_mean_s: float) -> list[DecisionMessage]:
        """Every query's decision, in plan order, once every grade is sent."""
        self.delay_mean_s = delay_mean_s
        await self.producer.start()
        await self.consumer.start()
        collecting = None
        try:
            await _until_assigned(self.consumer)
            collecting = asyncio.create_task(self.collect())
            await self.send_queries(rate)
            await collecting
            await asyncio.gather(*self.grading)
            await self.producer.flush()
        finally:
            unfinished = [t for t in (collecting, *self.grading) if t is not None and not t.done()]
            for task in unfinished:  # an error or Ctrl-C: stop reading and grading first
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            await self.consumer.stop()
            await self.producer.stop()
        return [self.decided[i] for i in range(len(self.ids))]

    async def send_queries(self, rate: float) -> None:
        started, topic = time.monotonic(), self.settings.topics.queries
        for i, row in enumerate(self.plan.rows):
            query = QueryMessage(query_id=self.ids[i], scope=self.scope,
                                 text=self.outcomes.questions[row])  # fmt: skip
            phase = self.plan.phases[int(self.plan.phase[i])].name
            if not self.phase_starts or self.phase_starts[-1]["name"] != phase:
                self.phase_starts.append({"name": phase, "at": time.time()})  # for the charts
            await self.producer.send(topic, query.to_bytes(), key=self.ids[i].encode())
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def collect(self) -> None:
        last_progress = time.monotonic()
        while len(self.decided) < len(self.ids):
            if time.monotonic() - last_progress > IDLE_TIMEOUT_S:
                raise RacerError(
                    f"{len(self.ids) - len(self.decided)} of {len(self.ids)} queries got no "
                    f"decision within {IDLE_TIMEOUT_S:.0f} s: is a worker running with a base "
                    f"router for text queries? Rejected queries are on {self.settings.topics.dlq}"
                )
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                last_progress = time.monotonic()
                for record in records:
                    self.take(DecisionMessage.parse(record.value))

    def take(self, decision: DecisionMessage) -> None:
        i = self.position.get(decision.query_id)
        if i is None or i in self.decided:
            return  # another run's decision, or a redelivery
        self.decided[i] = decision
        task = asyncio.create_task(self.grade(i, decision))
        self.grading.add(task)
        task.add_done_callback(self.grading.discard)
        if self.on_progress:
            self.on_progress(len(self.decided), len(self.ids))

    async def grade(self, i: int, decision: DecisionMessage) -> None:
        delay = self.rng.exponential(self.delay_mean_s) if self.delay_mean_s > 0 else 0
        await asyncio.sleep(delay)
        names = self.config.model_names
        graded = names if decision.audit else decision.models
        if graded:
            labels = {m: int(self.labels[i, names.index(m)]) for m in graded}
            event = FeedbackMessage(query_id=self.ids[i], scope=self.scope, labels=labels)
            topic = self.settings.topics.feedback
            await self.producer.send(topic, event.to_bytes(), key=self.ids[i].encode())


async def _until_assigned(consumer: AIOKafkaConsumer) -> None:
    """Wait until the consumer owns its partitions and sits at their end."""
    while not consumer.assignment():
        await asyncio.sleep(0.05)
    for tp in consumer.assignment():
        await consumer.position(tp)


def held_out_rows(outcomes: Outcomes, router_file: Path | None) -> NDArray[np.intp] | None:
    """Rows the router was not trained on, from the split kept in its header; None: all."""
    if router_file is None:
        return None
    from racer_online.routers.training import split_rows

    header_file = router_paths(router_file)[0]
    try:
        header = json.loads(header_file.read_text())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "not a router header"
        raise InvalidInputError(f"cannot read the router {header_file}: {reason}") from None
    training = header.get("training") or {}
    if training.get("rows") != len(outcomes) or "seed" not in training:
        return None  # trained on other data: every row is new to it
    _, test = split_rows(
        outcomes, train_fraction=float(training["train_fraction"]), seed=int(training["seed"])
    )
    return test
