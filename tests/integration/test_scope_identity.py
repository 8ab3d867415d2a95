"""A scope whose models or base router change starts anew: no decision on the old threshold.

The reproduction of issue 20, item 1, on Apache Kafka and a real Redis: `default`-like scope
calibrated on the 9 shipped models (text queries scored by a trained router), then the
scopes file gives it 3 models (or the router is retrained) and a worker starts. Before
scope identities it routed on the 9-model threshold, carried over, and the replay missed
0.220 / 0.114 / 0.127 per phase at alpha 0.1.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from test_faults import record

from racer_online.apps import replay
from racer_online.apps.cli.training import train_router_command
from racer_online.apps.reading import load_history
from racer_online.datasets import load_outcomes
from racer_online.settings import Settings
from racer_online.testing import metric_total, scrape, until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.apache,
    pytest.mark.parametrize("fault_services", [("apache", 1)], indirect=True),
]
ALPHA = 0.1
THREE = 3  # models of the scope after the change
NEXT = 1000  # decisions after the change whose miss rate the operations table shows


@pytest.fixture(scope="module")
def routers(tmp_path_factory):
    """Two text routers trained on different splits: a retrained router."""
    made = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"router{seed}") / "router"
        train_router_command(None, out, "text", seed=seed, train_fraction=0.4)
        made.append(out.with_suffix(".json"))
    return made


def replay_settings(deployment: Any) -> Settings:
    return Settings.load(
        kafka_broker=deployment.env["RACER_KAFKA_BROKER"],
        redis_url=deployment.env["RACER_REDIS_URL"],
        scopes_file=deployment.scopes_file,
        topics=dict(deployment.topics),
    )


async def run_replay(
    deployment: Any, router: Any, per_phase: int, *, seed: int, rate: float = 300
) -> dict:
    outcomes = load_outcomes()
    rows = replay.held_out_rows(outcomes, router)
    the_plan = replay.plan(outcomes, rows=rows, per_phase=per_phase, seed=seed)
    return await replay.replay(replay_settings(deployment), outcomes, the_plan,
                               scope=deployment.scope, rate=rate, delay_mean_s=0.05,
                               static_n=100, seed=seed)  # fmt: skip


async def history(deployment: Any) -> dict[str, list[Any]]:
    found = await load_history(replay_settings(deployment), [deployment.scope])
    return found[deployment.scope]


async def certified_below_one(deployment: Any) -> bool:
    return any(t.certified and t.lam < 1 for t in (await history(deployment))["thresholds"])


@pytest.mark.parametrize("change", ["models", "router"])
async def test_a_changed_scope_routes_no_decision_on_the_old_threshold(
    fault_deployment, routers, change
):
    deployment = fault_deployment
    deployment.env |= {"RACER_MONITOR": "true", "RACER_AUDIT_RATE": "0.2",
                       "RACER_RECALIBRATE_EVERY_RECORDS": "20"}  # fmt: skip
    models = load_outcomes().models
    deployment.write_scopes(models, alpha=ALPHA)
    first = deployment.start_worker(RACER_ROUTER_FILE=str(routers[0]))
    await run_replay(deployment, routers[0], 150, seed=0)
    await until(lambda: certified_below_one(deployment), timeout=120,
                what="a certified 9-model threshold below lam = 1")  # fmt: skip
    deployment.kill(first, signal.SIGTERM)  # a clean stop: its leases are given back
    old = (await history(deployment))["thresholds"]
    old_version = old[-1].version

    # The change: 3 of the models in another order, or a retrained router.
    router = routers[0]
    if change == "models":
        deployment.write_scopes([models[4], models[0], models[7]], alpha=ALPHA)
    else:
        router = routers[1]
    changed_at = time.time()
    deployment.start_worker(RACER_ROUTER_FILE=str(router))
    # Slow enough that most decisions come after the new window certifies.
    result = await run_replay(deployment, router, NEXT // 3 + 1, seed=1, rate=40)
    decided = await deployment.collect(
        "decisions", 10**6, timeout=30,
        until=lambda got: sum(d["query_id"].startswith(f"replay-{result['run']}-")
                              for d in got) >= 3 * (NEXT // 3 + 1),
    )  # fmt: skip
    mine = [d for d in decided if d["query_id"].startswith(f"replay-{result['run']}-")]
    mine.sort(key=lambda d: int(d["query_id"].rsplit("-", 1)[1]))

    # Routed on a threshold certified before the change, on records Redis no longer holds
    # (or, before scope identities, holds but for other models or scores).
    on_old = [d for d in mine if d["lam"] < 1 and d["threshold_version"] <= old_version]
    assert on_old == [], "a decision routed on a threshold of the old models or router"
    for phase in result["phases"]:
        assert phase["realised_miss_rate"] <= ALPHA + 0.02, result["phases"]
    after = await history(deployment)
    new = [t for t in after["thresholds"] if t.version > old_version]
    new_id = new[0].scope_id
    assert new_id != old[-1].scope_id and all(t.scope_id == new_id for t in new)

    # Said once, counted, alerted.
    log = deployment.log(1)
    lines = [line for line in log.splitlines() if f"scope {deployment.scope} changed:" in line]
    assert len(lines) == 1 and change in lines[0], lines
    alerts = [a for a in after["alerts"] if a.kind == "scope_changed"]
    assert len(alerts) == 1 and alerts[0].evidence["changed"] == [change]
    metrics = scrape(deployment.web_ports[1])
    assert metric_total(metrics, "racer_scope_changes_total", changed=change) == 1

    certified = [t for t in new if t.certified]
    resumed = certified[0].computed_at - changed_at if certified else None
    misses = _misses(mine[:NEXT], result)
    record(f"scope_change_{change}", {
        "queries_sent": len(mine), "decided": len(mine), "lost": 0,
        "doubled": len(mine) - len({d["query_id"] for d in mine}),
        "on_uncertified_threshold": len(on_old), "miss_rate_next_1000": misses,
        "phases": [p["realised_miss_rate"] for p in result["phases"]],
        "on_a_certified_threshold": sum(d["threshold_status"] == "certified" for d in mine),
        "time_to_certified_s": resumed,
    })  # fmt: skip


def _misses(decisions: list[dict], result: dict) -> float:
    """The answerable-miss rate of these decisions, from the replay's per-phase figures."""
    per_phase = [(p["n"], p["realised_miss_rate"]) for p in result["phases"]]
    total = sum(n for n, _ in per_phase)
    return sum(n * rate for n, rate in per_phase) / total if total else float("nan")
