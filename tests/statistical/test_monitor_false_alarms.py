"""False alarms of the drift monitor on stationary streams stay within its stated level.

The stated level is Lorden's bound: at most ``monitor_false_alarm_rate`` false alarms per
graded decision, in expectation, while the risk stays on the null side (docs/method.md).
"""

import numpy as np
import pytest

from racer_online.core import drift
from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore

pytestmark = pytest.mark.statistical

MODELS = ("m0", "m1", "m2")


@pytest.mark.parametrize("level", [1e-2, 1e-3])
def test_a_cusum_at_its_null_boundary_alarms_within_the_level(level):
    rng = np.random.default_rng(7)
    hyp, h = drift.Hypotheses(0.1, 0.2), drift.threshold_for(level)
    outcomes = rng.uniform(size=300_000) < hyp.p0  # exactly at the boundary: the worst case
    alarms, stat, i = 0, 0.0, 0
    while i < outcomes.size:
        stat, at = drift.cusum(stat, outcomes[i : i + 1000], hyp, h=h)
        if at is None:
            i += 1000
        else:
            alarms, stat, i = alarms + 1, 0.0, i + at + 1
    assert alarms <= level * outcomes.size
    assert alarms > 0  # the detector is live: the bound is met, not avoided


@pytest.mark.parametrize("covariate", [False, True])
async def test_the_service_on_a_stationary_stream_alarms_within_the_level(tmp_path, covariate):
    level = 1e-2  # high, so that a wrong threshold would show within the run
    path = tmp_path / "scopes.toml"
    path.write_text(
        "[scopes.default]\nalpha = 0.1\ndelta = 0.1\n"
        "[scopes.default.models]\nm0 = { price = 1 }\nm1 = { price = 2 }\nm2 = { price = 3 }\n"
    )
    settings = Settings(
        _env_file=None, scopes_file=path, audit_rate=0.1, monitor_false_alarm_rate=level,
        audit_key="stationary", monitor_covariate=covariate,
    )  # fmt: skip

    class Clock:
        now = 1_800_000_000.0

        def __call__(self):
            return self.now

    clock = Clock()
    service = RacerService(settings, MemoryStore(store_config(settings), clock=clock), clock=clock)
    rng = np.random.default_rng(3)
    n, batch, lag = 20_000, 50, 1
    scores = rng.uniform(size=(n, 3))
    labels = rng.uniform(size=(n, 3)) < 0.25 + 0.6 * scores  # calibrated-ish, stationary
    alarms, graded, pending = 0, 0, []
    for start in range(0, n, batch):
        rows = range(start, start + batch)
        routed = await service.route([
            QueryMessage(query_id=f"q{i}", scores=dict(zip(MODELS, scores[i].tolist(),
                                                           strict=True)))
            for i in rows
        ])  # fmt: skip
        if len(pending) >= lag:
            await service.record_feedback(pending.pop(0))
        events = []
        for i, r in zip(rows, routed, strict=True):
            graded_models = MODELS if r.fields["audit"] else r.fields["models"]
            if graded_models:
                events.append(FeedbackMessage(scope="default", query_id=f"q{i}", labels={
                    m: int(labels[i, MODELS.index(m)]) for m in graded_models}))  # fmt: skip
        pending.append(events)
        graded += len(events)
        clock.now += 1
        updates = await service.leader.recalibrate_due()
        alarms += sum(a.kind == "drift" for a in updates.alerts)
    assert alarms <= level * graded, (alarms, graded)
    watched, _ = await service.store.covariate_counts("default")
    assert (watched > n // 2) == covariate  # the channel watched most of the stream
