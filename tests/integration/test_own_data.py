"""Bring your own data: five invented models and three tasks, a router trained on them,
replayed through a real worker; the figures are checked against the decisions read back.
Then the tools a user reaches for next: route, publish, dlq."""

import csv
import json
import subprocess
import sys
import urllib.request
from collections import Counter

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from racer_online.apps import replay
from racer_online.apps.cli.training import train_router_command
from racer_online.datasets import load_outcomes, scopes_toml
from racer_online.local.processes import free_port
from racer_online.settings import Settings

pytestmark = pytest.mark.integration

MODELS = ("org/model-a", "vendor:model.b", "lab/model-c:v2", "model.d", "e_small")
PRICES = (0.5, 2.0, 8.0, 0.1, 1.0)
# Chance each model answers a query of each task: every task has its own best model.
SKILL = {
    "algebra": (0.9, 0.5, 0.95, 0.2, 0.3),
    "history": (0.3, 0.9, 0.95, 0.6, 0.2),
    "poetry": (0.2, 0.4, 0.9, 0.3, 0.8),
}
WORDS = {
    "algebra": "solve equation variable integer root factor sum product",
    "history": "empire war treaty king century revolution dynasty battle",
    "poetry": "rhyme verse stanza meter sonnet image metaphor line",
}


def own_outcomes(path, *, per_task=150, seed=0):
    rng = np.random.default_rng(seed)
    header = ["query_id", "question", "task", *(f"y:{m}" for m in MODELS)]
    header += [f"price:{m}" for m in MODELS]
    rows = []
    for task, skill in SKILL.items():
        vocabulary = WORDS[task].split()
        for i in range(per_task):
            words = [*rng.choice(vocabulary, size=6).tolist(), f"n{rng.integers(40)}"]
            labels = (rng.uniform(size=len(MODELS)) < skill).astype(int).tolist()
            rows.append([f"{task}-{i}", " ".join(words), task, *labels, *PRICES])
    order = rng.permutation(len(rows))  # tasks interleaved in the file
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *(rows[i] for i in order)])
    return path


@pytest.fixture
def own(deployment):
    path = own_outcomes(deployment.tmp_path / "own.csv")
    outcomes = load_outcomes(path)
    router = deployment.tmp_path / "router"
    train_router_command(path, router, "text", seed=0, train_fraction=0.4)
    (deployment.tmp_path / "scopes.toml").write_text(scopes_toml(outcomes, scope=deployment.scope))
    settings = Settings.load(
        kafka_broker=deployment.env["RACER_KAFKA_BROKER"],
        redis_url=deployment.env["RACER_REDIS_URL"],
        scopes_file=deployment.tmp_path / "scopes.toml",
        topics=dict(deployment.topics),
    )
    return outcomes, router.with_suffix(".json"), settings


def metric(port, name, labels):
    """One sample of the worker's /metrics; 0 when the series does not exist yet."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_five_invented_models_three_tasks_through_a_real_worker(deployment, own):
    outcomes, router, settings = own
    assert outcomes.models == MODELS and outcomes.task_names[0] in SKILL
    port = free_port()
    deployment.start_worker(
        RACER_ROUTER_FILE=str(router), RACER_AUDIT_RATE="0.5",
        RACER_RECALIBRATE_EVERY_RECORDS="20", RACER_WEB_PORT=str(port),
    )  # fmt: skip
    the_plan = replay.plan(outcomes, rows=replay.held_out_rows(outcomes, router), per_phase=40)
    assert [p.tasks for p in the_plan.phases] == [(t,) for t in outcomes.task_names]
    result = await replay.replay(settings, outcomes, the_plan, scope=deployment.scope,
                                 rate=400, delay_mean_s=0.05, static_n=40)  # fmt: skip

    published = await deployment.collect("decisions", len(the_plan.rows))
    mine = {d["query_id"]: d for d in published
            if d["query_id"].startswith(f"replay-{result['run']}-")}  # fmt: skip
    assert len(mine) == len(the_plan.rows) == 120
    position = {qid: int(qid.rsplit("-", 1)[1]) for qid in mine}
    prices = dict(zip(MODELS, PRICES, strict=True))
    for index, figures in enumerate(result["phases"]):
        decided = [(position[q], d) for q, d in mine.items()
                   if the_plan.phase[position[q]] == index]  # fmt: skip
        assert figures["name"] == outcomes.task_names[index] and figures["n"] == len(decided) == 40
        labels = outcomes.labels[the_plan.rows[[p for p, _ in decided]]]
        chosen = [[MODELS.index(m) for m in d["models"]] for _, d in decided]
        hit = [labels[i, c].any() for i, c in enumerate(chosen)]
        missed = [labels[i].any() and not h for i, h in enumerate(hit)]
        assert figures["realised_miss_rate"] == pytest.approx(np.mean(missed))
        assert figures["coverage"] == pytest.approx(np.mean(hit))
        assert figures["mean_set_size"] == pytest.approx(np.mean([len(c) for c in chosen]))
        spent = [sum(prices[m] for m in d["models"]) for _, d in decided]
        assert figures["mean_price"] == pytest.approx(np.mean(spent))

    # Per model on /metrics, counted at decision time, against the decisions read back.
    held = Counter(m for d in mine.values() for m in d["models"])
    for m in MODELS:
        labels = {"scope": deployment.scope, "model": m}
        assert metric(port, "racer_model_in_set_total", labels) == held[m]
        assert metric(port, "racer_model_price_total", labels) == pytest.approx(held[m] * prices[m])
    # ... and in the threshold statistics, on the window at the stored lam.
    thresholds = await deployment.collect(
        "thresholds", 10**6, until=lambda got: any(t["n"] for t in got)
    )
    last = [t for t in thresholds if t["n"]][-1]
    assert list(last["per_model"]) == list(MODELS)
    shares = [last["per_model"][m]["price_share"] for m in MODELS]
    assert sum(shares) == pytest.approx(1.0) or sum(shares) == 0


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "racer_online", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


async def test_route_publish_and_dlq_on_a_running_worker(deployment, own):
    _, router, _ = own
    env = deployment.env | {"RACER_ROUTER_FILE": str(router)}
    deployment.start_worker(RACER_ROUTER_FILE=str(router))
    scope = deployment.scope
    good = {"query_id": "one", "scope": scope, "scores": dict.fromkeys(MODELS, 0.5)}
    bad = {"query_id": "bad", "scope": scope, "scores": {"org/model-a": 0.5, "nobody": 0.1}}
    (deployment.tmp_path / "one.jsonl").write_text(json.dumps(good) + "\n")
    (deployment.tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")

    sent = cli("publish", deployment.tmp_path / "one.jsonl", env=env)
    assert sent.returncode == 0 and sent.stderr.strip().startswith("published 1 query to ")
    refused = cli("publish", deployment.tmp_path / "bad.jsonl", env=env)
    assert refused.returncode == 1 and "unknown model 'nobody'" in refused.stderr
    forced = cli("publish", "--force", deployment.tmp_path / "bad.jsonl", env=env)
    assert forced.returncode == 0, forced.stderr
    [letter] = await deployment.collect("dlq", 1)
    [decision] = await deployment.collect("decisions", 1)
    assert decision["query_id"] == "one"

    shown = cli("dlq", "--json", "--reason", "unknown_model", env=env)
    assert shown.returncode == 0, shown.stderr
    [row] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (row["source_topic"], row["offset"]) == (letter["source_topic"], letter["offset"])
    assert row["reason"] == "unknown model 'nobody' in scope " + repr(scope)
    assert '"query_id":"bad",' in row["payload"] and row["raw_size"] > len(row["payload"])
    assert cli("dlq", "--json", "--reason", "no such reason", env=env).stdout == ""

    # route decides with the stored threshold and the service's code, and stores nothing.
    routed = cli("route", "--scope", scope, "solve the equation for the root", "--json", env=env)
    assert routed.returncode == 0, routed.stderr
    answer = json.loads(routed.stdout)
    current = json.loads(cli("thresholds", "--scope", scope, "--json", env=env).stdout)[scope]
    assert answer["threshold_version"] == current["version"] and answer["lam"] == current["lam"]
    assert set(answer["scores"]) == set(MODELS) and set(answer["models"]) <= set(MODELS)
    scores = json.dumps(dict.fromkeys(MODELS, 0.5))
    table = cli("route", "--scope", scope, "--scores", scores, env=env)
    assert table.returncode == 0 and "…" not in table.stdout
    assert table.stdout.splitlines()[0] == "RACER decisions (current stored thresholds)"
    assert (await deployment.collect("decisions", 2, timeout=3)) == [decision]  # none published
