"""Turn a decision into model calls: which model of the set answers, and, on an audit,
every model called and graded so that the record can enter the calibration window.

A policy says in which order the set's models are tried and which answer is accepted:
`Cheapest` tries only the cheapest model of the set, `Cascade` tries the set in its order
(most promising first) until ``accept(answer)`` says yes. On an audit every model of the
scope is called (concurrently by the async client) and graded, whatever the policy; the
policy then picks the served answer among them. A call or a grader that fails, or a grader
that times out or cannot tell (None), gives no label for that model: a guessed label would
bias the window, and an audit that never completes is entered as a worst case.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from racer_online.client.graders import Grader
from racer_online.messages import DecisionMessage

Call = Callable[[str], Any]  # a model id -> its answer
AsyncCall = Callable[[str], Awaitable[Any]]


class Cheapest:
    """The cheapest model of the set (ties, and models without a price: the more promising
    one first)."""

    def __init__(self, prices: Mapping[str, float]) -> None:
        self.prices = dict(prices)

    def order(self, decision: DecisionMessage) -> list[str]:
        if not decision.models:
            return []
        ranked = sorted(enumerate(decision.models), key=lambda m: (self.prices.get(m[1], math.inf),
                                                                    m[0]))  # fmt: skip
        return [ranked[0][1]]

    def accept(self, answer: Any) -> bool:
        return True


class Cascade:
    """The set in its order until ``accept(answer)``; the last answer if none is accepted."""

    def __init__(self, accept: Callable[[Any], bool]) -> None:
        self._accept = accept

    def order(self, decision: DecisionMessage) -> list[str]:
        return list(decision.models)

    def accept(self, answer: Any) -> bool:
        return bool(self._accept(answer))


Policy = Cheapest | Cascade


@dataclass
class Outcome:
    """What running a decision gave: the served model and answer (None on an abstention,
    or when every call failed), every answer obtained, and the labels sent as feedback."""

    decision: DecisionMessage
    model: str | None
    answer: Any
    answers: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)


def audit_models(decision: DecisionMessage) -> list[str]:
    """Every model of the scope, the set's first: an audited record needs every label."""
    return list(decision.models) + [m for m in decision.scores if m not in decision.models]


def _served(policy: Policy, decision: DecisionMessage, answers: Mapping[str, Any]) -> str | None:
    tried = [m for m in policy.order(decision) if m in answers]
    return next((m for m in tried if policy.accept(answers[m])), tried[-1] if tried else None)


def run(
    decision: DecisionMessage,
    call: Call,
    policy: Policy,
    *,
    grader: Grader | None = None,
    grade_timeout_s: float = 30.0,
) -> Outcome:
    """Call the models the decision asks for, one after another."""
    outcome = Outcome(decision, None, None)
    wanted = audit_models(decision) if decision.audit else policy.order(decision)
    for model in wanted:
        try:
            outcome.answers[model] = call(model)
        except Exception as exc:
            outcome.errors[model] = exc
            continue
        if not decision.audit and policy.accept(outcome.answers[model]):
            break
    _finish(outcome, policy)
    if grader is not None:
        outcome.labels = _grade_all(grader, outcome.answers, grade_timeout_s)
    return outcome


async def arun(
    decision: DecisionMessage,
    call: AsyncCall,
    policy: Policy,
    *,
    grader: Grader | None = None,
    grade_timeout_s: float = 30.0,
) -> Outcome:
    """The async twin of `run`; an audit calls every model concurrently."""
    outcome = Outcome(decision, None, None)
    if decision.audit:
        models = audit_models(decision)
        got = await asyncio.gather(*(call(m) for m in models), return_exceptions=True)
        for model, answer in zip(models, got, strict=True):
            if isinstance(answer, BaseException):
                outcome.errors[model] = answer
            else:
                outcome.answers[model] = answer
    else:
        for model in policy.order(decision):
            try:
                outcome.answers[model] = await call(model)
            except Exception as exc:
                outcome.errors[model] = exc
                continue
            if policy.accept(outcome.answers[model]):
                break
    _finish(outcome, policy)
    if grader is not None:
        labels = await asyncio.gather(
            *(_agrade(grader, a, grade_timeout_s) for a in outcome.answers.values())
        )
        outcome.labels = {m: int(v) for m, v in zip(outcome.answers, labels, strict=True)
                          if v is not None}  # fmt: skip
    return outcome


def _finish(outcome: Outcome, policy: Policy) -> None:
    outcome.model = _served(policy, outcome.decision, outcome.answers)
    outcome.answer = None if outcome.model is None else outcome.answers[outcome.model]


def _grade_all(grader: Grader, answers: Mapping[str, Any], timeout_s: float) -> dict[str, int]:
    # In threads, so that a grader that hangs costs its timeout and no label, not the call.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(answers)))
    try:
        futures = {m: pool.submit(grader, a) for m, a in answers.items()}
        labels = {}
        for model, future in futures.items():
            try:
                verdict = future.result(timeout=timeout_s)
            except Exception:  # failed or timed out: no label for this model
                continue
            if verdict is not None:
                labels[model] = int(bool(verdict))
        return labels
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def _agrade(grader: Grader, answer: Any, timeout_s: float) -> bool | None:
    try:
        if inspect.iscoroutinefunction(grader):
            verdict = await asyncio.wait_for(grader(answer), timeout_s)
        else:
            verdict = await asyncio.wait_for(asyncio.to_thread(grader, answer), timeout_s)
    except Exception:  # failed or timed out: no label for this model
        return None
    return None if verdict is None else bool(verdict)
