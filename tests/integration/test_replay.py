"""The replay on a small slice of the real data, through a real worker with a text router."""

import json
from collections import defaultdict

import numpy as np
import pytest

from racer_online.apps import replay
from racer_online.datasets import load_outcomes
from racer_online.settings import Settings

pytestmark = pytest.mark.integration


async def test_replay_figures_come_from_the_published_decisions(deployment, router_file):
    outcomes = load_outcomes()
    deployment.write_scopes(outcomes.models)
    deployment.start_worker(RACER_ROUTER_FILE=str(router_file), RACER_AUDIT_RATE="0.5",
                            RACER_RECALIBRATE_EVERY_RECORDS="20")  # fmt: skip
    settings = Settings.load(
        kafka_broker=deployment.env["RACER_KAFKA_BROKER"],
        redis_url=deployment.env["RACER_REDIS_URL"],
        scopes_file=deployment.tmp_path / "scopes.toml",
        topics={k: v for k, v in deployment.topics.items()},
    )
    rows = replay.held_out_rows(outcomes, router_file)
    the_plan = replay.plan(outcomes, rows=rows, per_phase=40)
    assert not set(the_plan.rows) - set(rows)  # never a question the router trained on
    result = await replay.replay(settings, outcomes, the_plan, scope=deployment.scope,
                                 rate=400, delay_mean_s=0.05, static_n=40)  # fmt: skip

    # Recompute from the decisions topic: the figures are what the worker decided.
    published = await deployment.collect("decisions", 120)
    mine = {
        d["query_id"]: d for d in published if d["query_id"].startswith(f"replay-{result['run']}-")
    }
    assert len(mine) == 120
    by_phase = defaultdict(list)
    for qid, decision in mine.items():
        position = int(qid.rsplit("-", 1)[1])
        by_phase[int(the_plan.phase[position])].append((position, decision))
    for index, figures in enumerate(result["phases"]):
        decided = by_phase[index]
        assert figures["n"] == len(decided) == 40
        sizes = [len(d["models"]) for _, d in decided]
        assert figures["mean_set_size"] == pytest.approx(np.mean(sizes))
        labels = outcomes.labels[the_plan.rows[[p for p, _ in decided]]]
        index_of = {m: i for i, m in enumerate(outcomes.models)}
        hit = [
            labels[i, [index_of[m] for m in d["models"]]].any() for i, (_, d) in enumerate(decided)
        ]
        missed = [labels[i].any() and not h for i, h in enumerate(hit)]  # answerable misses
        assert figures["realised_miss_rate"] == pytest.approx(np.mean(missed))
    assert set(result["baselines"]) == {"static", "top1", "all", "cheapest"}
    assert all(f["mean_set_size"] == 9 for f in result["baselines"]["all"])
    json.dumps(result)  # the --json output is plain JSON
