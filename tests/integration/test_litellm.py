"""The LiteLLM routing plugin with a real `litellm.Router` whose deployments answer with
LiteLLM's own ``mock_response`` (no network), on a real worker, broker and Redis."""

import numpy as np
import pytest
from litellm import Router

from racer_online.client import AsyncRacerClient, Cheapest, exact_match
from racer_online.datasets import load_outcomes
from racer_online.integrations import litellm

pytestmark = pytest.mark.integration


def deployments(models, right):
    """One deployment per scope model, all in the model group "racer": a model answers
    "right" where the shipped outcomes say it is correct on the question."""
    return [
        {"model_name": "racer", "litellm_params": {
            "model": f"openai/{m}", "api_key": "unused", "mock_response": answer}}
        for m, answer in zip(models, right, strict=True)
    ]  # fmt: skip


async def test_the_plugin_routes_audits_and_its_labels_certify_a_threshold(deployment, router_file):
    outcomes = load_outcomes()
    models = list(outcomes.models)
    deployment.write_scopes(models)
    deployment.start_worker(RACER_ROUTER_FILE=str(router_file))
    await deployment.wait_answering()
    url = f"http://127.0.0.1:{deployment.web_ports[0]}"
    rows = np.random.default_rng(5).permutation(len(outcomes.questions))[:60]
    async with AsyncRacerClient(url) as racer:
        plugin = litellm.RacerRoutingPlugin(
            racer, scope=deployment.scope, policy=Cheapest(dict.fromkeys(models, 0.1)),
            models={m: f"openai/{m}" for m in models},
        )  # fmt: skip
        for row in rows:
            correct = outcomes.labels[row].astype(bool)
            router = Router(model_list=deployments(models, ["right" if c else "wrong"
                                                            for c in correct]),
                            plugins=[plugin])  # fmt: skip
            messages = [{"role": "user", "content": outcomes.questions[row]}]
            response = await plugin.acompletion(router, model="racer", messages=messages,
                                                grader=exact_match("right"))  # fmt: skip
            seen = response._hidden_params["racer"]
            decision = seen["decision"]
            assert decision["audit"] and decision["scope"] == deployment.scope
            assert response._hidden_params["litellm_model_name"] == f"openai/{seen['model']}"
            assert seen["model"] in decision["models"]
            assert seen["labels"] == dict(zip(models, correct.astype(int).tolist(), strict=True))
    updates = await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] >= 60)
    assert updates[-1]["n"] == 60 and updates[-1]["status"] == "certified"

    # A plain router.acompletion is routed by RACER too; the decision is in the metadata.
    async with AsyncRacerClient(url) as racer:
        plugin.racer = racer
        router = Router(model_list=deployments(models, ["x"] * len(models)), plugins=[plugin])
        metadata: dict = {}
        response = await router.acompletion(
            model="racer", messages=[{"role": "user", "content": outcomes.questions[rows[0]]}],
            metadata=metadata,
        )  # fmt: skip
        decision = metadata["routing_plugin_signals"]["racer"]
        assert decision["threshold_status"] == "certified"
        cheapest = decision["models"][0]
        assert response._hidden_params["litellm_model_name"] == f"openai/{cheapest}"
