"""A drift episode through a real worker: alert, recalibration, history and metrics."""

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from racer_online.local.processes import free_port

pytestmark = pytest.mark.integration
MODELS = ("m0", "m1", "m2")


def phase(scope, rng, start, n, *, flipped):
    """The router ranks m0 first. Before the shift it is right; after it, m0 fails."""
    scores = (np.tile([0.8, 0.15, 0.05], (n, 1)) + rng.uniform(0, 0.02, (n, 3))).round(4)
    accuracy = np.array([0.05, 0.3, 0.9]) if flipped else np.array([0.95, 0.3, 0.1])
    correct = rng.uniform(size=(n, 3)) < accuracy
    ids = [f"q{start + i}" for i in range(n)]
    queries = [{"query_id": q, "scope": scope, "scores": dict(zip(MODELS, s.tolist(), strict=True))}
               for q, s in zip(ids, scores, strict=True)]  # fmt: skip
    feedback = [{"query_id": q, "scope": scope,
                 "labels": {m: int(y) for m, y in zip(MODELS, row, strict=True)}}
                for q, row in zip(ids, correct, strict=True)]  # fmt: skip
    return queries, feedback


async def test_drift_episode_end_to_end(deployment):
    scope = deployment.scope
    deployment.write_scopes(MODELS)
    port = free_port()
    deployment.start_worker(RACER_WEB_PORT=str(port), RACER_RECALIBRATE_EVERY_RECORDS="100")
    rng = np.random.default_rng(0)
    for start, flipped in ((0, False), (1000, True)):
        for offset in range(0, 600, 100):
            queries, feedback = phase(scope, rng, start + offset, 100, flipped=flipped)
            await deployment.send("queries", queries)
            await deployment.send("feedback", feedback)
        if not flipped:  # calm phase fully calibrated before the shift
            await deployment.collect("thresholds", 10**6, until=lambda got: got[-1]["n"] == 600)
    [alert] = await deployment.collect("alerts", 1, timeout=90)
    assert alert["kind"] == "drift" and alert["evidence"]["direction"] == "rise"
    assert alert["evidence"]["statistic"] >= alert["evidence"]["h"]
    thresholds = await deployment.collect(
        "thresholds", 10**6, until=lambda got: any(t["reason"] == "drift" for t in got)
    )
    before = [t for t in thresholds if t["computed_at"] < alert["at"]][-1]
    at_drift = next(t for t in thresholds if t["reason"] == "drift")
    assert at_drift["computed_at"] - alert["at"] < 1.0  # within one recalibration interval
    # Every model and every decision graded until the decisions after the alarm certify.
    assert (at_drift["status"], at_drift["lam"], at_drift["audit_rate"]) == ("fallback", 1.0, 1.0)
    assert before["status"] == "certified" and before["lam"] < 1.0

    shown = subprocess.run([sys.executable, "-m", "racer_online", "thresholds", "--history",
                            "--scope", scope, "--json"], env=deployment.env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)[scope]
    assert [t["version"] for t in history] == sorted(t["version"] for t in history)
    assert any(t["reason"] == "drift" for t in history)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f'racer_alerts_total{{kind="drift",scope="{scope}"}}' in text
    assert f'racer_threshold{{scope="{scope}"}}' in text
    assert f'racer_realised_miss_rate{{scope="{scope}"}}' in text
