"""A LiteLLM routing plugin: RACER picks the deployment of a ``litellm.Router``.

LiteLLM's routing plugins (``Router(plugins=[...])``, LiteLLM >= 1.92) see each request's
candidate deployments, by ``litellm_params.model``, and may narrow them. `RacerRoutingPlugin`
asks racer-online for the query's set (the last user message is the query's text, scored
by the worker's base router), keeps the deployment its policy picks and publishes the
decision in the request's ``metadata["routing_plugin_signals"]["racer"]``. The scope's
model ids are the deployments' ``litellm_params.model``, or mapped by ``models``.

A routing plugin only narrows: it cannot call models. `RacerRoutingPlugin.acompletion`
does the rest of a routing decision: a cascade's next models, and on an audit every model
of the scope, concurrently, each graded by the request's grader and the labels sent as
feedback, so the calibration window fills without glue. Its response carries the decision
in ``response._hidden_params["racer"]``.

    plugin = RacerRoutingPlugin(AsyncRacerClient(url, token=token), policy=Cheapest(prices))
    router = litellm.Router(model_list=deployments, plugins=[plugin])
    response = await plugin.acompletion(router, model="racer", messages=messages,
                                        grader=exact_match("391"))
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

# LiteLLM fetches its model price map at import unless told to use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.types.router import RoutingContext

from racer_online.client import AsyncRacerClient, Grader, Policy
from racer_online.client.policies import arun
from racer_online.messages import DecisionMessage

QUERY_ID = "racer_query_id"  # metadata: the query id (generated when absent)
FORCED = "racer_model"  # metadata: call this scope model, without routing (audits, cascades)
SIGNAL = "racer"


class AbstainedError(Exception):
    """RACER abstained: no model of the scope is likely to answer (the decision's
    ``flag_unanswerable`` says whether the query should be flagged)."""

    def __init__(self, decision: DecisionMessage) -> None:
        super().__init__(f"racer-online abstained on query {decision.query_id!r}")
        self.decision = decision


class RacerRoutingPlugin:
    def __init__(
        self,
        racer: AsyncRacerClient,
        *,
        policy: Policy,
        scope: str = "default",
        models: Mapping[str, str] | None = None,
        grade_timeout_s: float = 30.0,
    ) -> None:
        self.racer, self.policy, self.scope = racer, policy, scope
        self._deployments = dict(models or {})  # scope model -> litellm_params.model
        self.grade_timeout_s = grade_timeout_s

    def deployment_model(self, model: str) -> str:
        return self._deployments.get(model, model)

    async def run(self, context: RoutingContext) -> RoutingContext:
        """LiteLLM's routing-plugin hook: keep the deployment RACER's set and the policy pick."""
        metadata = context.metadata
        forced = metadata.get(FORCED)
        if isinstance(forced, str):
            self._narrow(context, forced)
            return context
        query_id = metadata.get(QUERY_ID)
        decision = await self.racer.route(
            self.scope, text=_query_text(context.structured_messages),
            query_id=query_id if isinstance(query_id, str) else None,
        )  # fmt: skip
        context.signals[SIGNAL] = decision.model_dump()
        order = self.policy.order(decision)
        if not order:
            raise AbstainedError(decision)
        self._narrow(context, order[0])
        return context

    def _narrow(self, context: RoutingContext, model: str) -> None:
        wanted = self.deployment_model(model)
        if wanted not in context.candidate_models:
            raise ValueError(
                f"racer-online chose model {model!r}, but no deployment of this model group "
                f"serves {wanted!r} (its deployments: {', '.join(context.candidate_models)}); "
                "map the scope's models with RacerRoutingPlugin(models={...})"
            )
        context.candidate_models = [wanted]

    async def acompletion(
        self,
        router: Any,
        *,
        model: str,
        messages: list[dict[str, Any]],
        grader: Grader | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``router.acompletion`` routed by RACER, with the decision's other calls: the
        cascade's next models, and on an audit every model of the scope, graded and sent as
        feedback. Raises `AbstainedError` when RACER abstains."""
        metadata = dict(metadata or {})
        metadata.setdefault(QUERY_ID, uuid.uuid4().hex)
        first = await router.acompletion(model=model, messages=messages, metadata=metadata,
                                         **kwargs)  # fmt: skip
        decision = DecisionMessage.model_validate(metadata["routing_plugin_signals"][SIGNAL])
        routed_to = self.policy.order(decision)[0]

        async def call(m: str) -> Any:
            if m == routed_to:  # answered by the routed call already
                return first
            return await router.acompletion(model=model, messages=messages,
                                            metadata={FORCED: m}, **kwargs)  # fmt: skip

        outcome = await arun(decision, call, self.policy, grader=grader,
                             grade_timeout_s=self.grade_timeout_s)  # fmt: skip
        if outcome.labels:
            await self.racer.feedback(decision.query_id, decision.scope, outcome.labels)
        response = outcome.answer if outcome.answer is not None else first
        response._hidden_params[SIGNAL] = {
            "decision": decision.model_dump(),
            "model": outcome.model,
            "labels": outcome.labels,
        }
        return response


def _query_text(messages: list[dict[str, Any]]) -> str:
    """The last user message's text: the query the base router scores."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # parts: keep the text ones
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError("the request has no user message for racer-online to route")
