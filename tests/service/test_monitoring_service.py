"""Drift episodes, realised risk, alerts and ACI on the in-memory store."""

import numpy as np
import pytest

from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore

MODELS = ("m0", "m1", "m2")


def scopes_file(tmp_path, extra=""):
    path = tmp_path / "scopes.toml"
    path.write_text(
        f"[scopes.default]\nalpha = 0.1\ndelta = 0.1\n{extra}\n"
        "[scopes.default.models]\nm0 = { price = 1 }\nm1 = { price = 2 }\nm2 = { price = 3 }\n"
    )
    return path


class Clock:
    now = 1_800_000_000.0

    def __call__(self):
        return self.now


def make(tmp_path, store=None, extra="", **overrides):
    settings = Settings(
        _env_file=None,
        scopes_file=scopes_file(tmp_path, extra),
        **({"audit_rate": 1.0} | overrides),
    )
    clock = store.clock if store else Clock()
    store = store or MemoryStore(store_config(settings), clock=clock)
    return RacerService(settings, store, clock=clock)


def phase(rng, n, *, flipped):
    """Scores say m0 is best. Before the shift they are right; after it, m0 fails and the
    models the router ranks last are the ones that answer."""
    scores = np.tile([0.8, 0.15, 0.05], (n, 1)) + rng.uniform(0, 0.02, (n, 3))
    correct = rng.uniform(size=(n, 3)) < (
        np.array([0.05, 0.3, 0.9]) if flipped else [0.95, 0.3, 0.1]
    )
    return scores.round(4), correct


async def stream(service, scores, labels, start):
    ids = [f"q{start + i}" for i in range(len(scores))]
    await service.route([
        QueryMessage(query_id=q, scores=dict(zip(MODELS, s.tolist(), strict=True)))
        for q, s in zip(ids, scores, strict=True)
    ])  # fmt: skip
    await service.record_feedback([
        FeedbackMessage(scope="default", query_id=q,
                        labels={m: int(y) for m, y in zip(MODELS, row, strict=True)})
        for q, row in zip(ids, labels, strict=True)
    ])  # fmt: skip


async def run(service, rng, n, *, flipped, start, batch=50):
    alerts, thresholds = [], []
    for offset in range(0, n, batch):
        await stream(service, *phase(rng, batch, flipped=flipped), start + offset)
        service.clock.now += 1
        updates = await service.leader.recalibrate_due()
        alerts += updates.alerts
        thresholds += updates.thresholds
    return alerts, thresholds


async def test_a_drift_episode_alarms_protects_and_restarts_on_the_segment(tmp_path):
    # A segment of 100 records: it certifies before it is confirmed, which this test follows.
    service = make(tmp_path, recalibrate_every_records=50, confirm_records=100)
    rng = np.random.default_rng(0)
    calm_alerts, calm = await run(service, rng, 1000, flipped=False, start=0)
    assert calm_alerts == [] and calm[-1].status == "certified"
    lam_before = calm[-1].lam
    assert calm[-1].realised_miss_rate < 0.1

    alerts, after = await run(service, rng, 400, flipped=True, start=10_000)
    [drift] = [a for a in alerts if a.kind == "drift"]
    assert drift.evidence["direction"] == "rise"
    at_drift = next(t for t in after if t.reason == "drift")
    assert at_drift.computed_at == drift.at  # recalibrated at once
    # Protect: every model, every decision graded, until the segment certifies.
    assert (at_drift.status, at_drift.lam, at_drift.audit_rate) == ("fallback", 1.0, 1.0)
    segment = [t for t in after if t.reason == "segment" and t.status == "certified"]
    assert segment and segment[0].audit_rate == 1.0
    confirm = next(t for t in after if t.reason == "confirm")
    assert confirm.audit_rate is None  # back to the base rate
    # The window restarted from the decisions made at or after the alarm, and only those:
    # never from the outcomes that raised it.
    assert service.scopes["default"].window.decided_at.min() >= drift.at
    assert after[-1].lam > lam_before  # larger sets for the new traffic
    assert await service.store.alerts("default")  # alerts are kept for the monitor
    history = await service.store.threshold_history("default")
    assert len(history) == len(calm) + len(after)


async def test_the_first_segment_fills_to_warmup_records_an_alarms_to_confirm_records(tmp_path):
    """A new scope audits every decision until its window holds ``warmup_records``; a
    segment opened by an alarm is confirmed at ``confirm_records``. Base rate 0: every
    audit below is the segment's."""
    service = make(tmp_path, audit_rate=0.0, warmup_records=60, confirm_records=20)
    rng = np.random.default_rng(1)
    _, calm = await run(service, rng, 300, flipped=False, start=0, batch=10)
    first = next(i for i, t in enumerate(calm) if t.reason == "confirm")
    assert calm[first].n >= 60 and all(t.n < 60 for t in calm[:first])
    assert all(t.audit_rate == 1.0 for t in calm[:first]) and calm[first].audit_rate is None
    assert calm[-1].status == "certified" and calm[-1].lam < 1.0
    alerts, after = await run(service, rng, 200, flipped=True, start=10_000, batch=10)
    [drift] = [a for a in alerts if a.kind == "drift"]
    confirm = next(t for t in after if t.reason == "confirm")
    assert 20 <= confirm.n < 60  # the window is the alarm's segment, confirmed at 20
    assert service.scopes["default"].window.decided_at.min() >= drift.at


async def test_stale_calibration_alert_once_per_limit(tmp_path):
    service = make(tmp_path, threshold_max_age_s=600)
    assert (await service.leader.recalibrate_due()).alerts == []
    service.clock.now += 601
    [alert] = (await service.leader.recalibrate_due()).alerts
    assert alert.kind == "stale_calibration" and alert.evidence["status"] == "fallback"
    service.clock.now += 10
    assert (await service.leader.recalibrate_due()).alerts == []


async def test_upper_bound_of_non_audited_decisions_is_reported(tmp_path):
    service = make(tmp_path)
    service.settings.audit_rate = 0.0
    scope = service.scopes["default"]  # below lam = 1: at 1 every decision is a full record
    scope.apply(scope.threshold.model_copy(update={"lam": 0.5, "status": "certified"}))
    await stream(service, np.tile([0.8, 0.15, 0.05], (10, 1)), np.zeros((10, 3), bool), 0)
    [update] = (await service.leader.recalibrate_due()).thresholds
    assert (update.upper_bound_n, update.upper_bound_miss_rate) == (10, 1.0)
    assert update.realised_n == 0 and update.realised_miss_rate is None


async def test_aci_state_survives_a_restart(tmp_path):
    extra = "aci_gamma = 0.01"
    service = make(tmp_path, extra=extra, recalibrate_every_records=50)
    rng = np.random.default_rng(2)
    _, updates = await run(service, rng, 300, flipped=False, start=0)
    level = service.scopes["default"].monitor.alpha_t
    assert level != pytest.approx(0.1) and updates[-1].alpha_t == level
    await service.leader.release()  # it stops (a crashed one's lease lapses instead)
    restarted = make(tmp_path, store=service.store, extra=extra)
    await restarted.refresh_thresholds()
    await restarted.leader.recalibrate_due()
    assert restarted.scopes["default"].monitor.alpha_t == level  # no outcome applied twice


async def route_only(service, scores, start, batch=10):
    """Route without any feedback: no label ever reaches the leader."""
    alerts = []
    for offset in range(0, len(scores), batch):
        await service.route([
            QueryMessage(query_id=f"q{start + offset + i}",
                         scores=dict(zip(MODELS, s.tolist(), strict=True)))
            for i, s in enumerate(scores[offset : offset + batch])
        ])  # fmt: skip
        service.clock.now += 1
        alerts += (await service.leader.recalibrate_due()).alerts
    return alerts


@pytest.mark.parametrize("covariate", [True, False])
async def test_the_covariate_channel_sees_unsure_traffic_before_any_label(tmp_path, covariate):
    """Queries the router is unsure of (top score 0.4, below every calm one) with their
    labels withheld: only the covariate channel can see them, at routing time."""
    on = {} if covariate else {"monitor_covariate": False}  # on by default
    service = make(tmp_path, audit_rate=0.1, warmup_records=60, **on)
    rng = np.random.default_rng(2)
    _, calm = await run(service, rng, 400, flipped=False, start=0, batch=10)
    assert calm[-1].status == "certified"
    assert (calm[-1].covariate_cut is not None) == covariate  # set once the warm-up confirms
    unsure = np.tile([0.4, 0.35, 0.25], (200, 1)) + rng.uniform(0, 0.02, (200, 3))
    alerts = await route_only(service, unsure.round(4), start=10_000)
    drifts = [a for a in alerts if a.kind == "drift"]
    if not covariate:
        assert drifts == []  # without labels no other channel moves
        return
    [drift] = drifts
    assert drift.evidence["channel"] == "covariate" and drift.evidence["direction"] == "rise"
    assert drift.evidence["statistic"] >= drift.evidence["h"]
    # The clock ticks by whole seconds: the segment starts strictly after the decisions of
    # the alarm's tick, which the counts that raised it include.
    tick = float(round(drift.at))
    assert drift.evidence["segment_from"] > tick and drift.at - tick < 1e-6
    watched, low = await service.store.covariate_counts("default")
    assert low <= watched and low >= 20  # counted at routing time, no label needed
    assert service.scopes["default"].threshold.lam == 1.0  # protected at once
    assert service.scopes["default"].threshold.covariate_cut is None  # the segment: unwatched


async def test_confident_traffic_does_not_raise_the_covariate_channel(tmp_path):
    service = make(tmp_path, audit_rate=0.1, warmup_records=60)
    rng = np.random.default_rng(3)
    await run(service, rng, 400, flipped=False, start=0, batch=10)
    sure = np.tile([0.97, 0.02, 0.01], (300, 1))
    watched, low = await service.store.covariate_counts("default")
    assert await route_only(service, sure, start=10_000) == []
    assert await service.store.covariate_counts("default") == (watched + 300, low)


def test_a_new_leader_resumes_the_covariate_channel():
    from racer_online.service import drift as watch
    from racer_online.service.scope import Monitor

    mon = Monitor(covariate=3.5, covariate_cut=0.4121, covariate_p0=0.24,
                  covariate_p1=0.48, covariate_seen=(640, 107))  # fmt: skip
    restored = Monitor()
    watch.load_state(restored, watch.saved_state(mon), alpha=0.1, aci=False)
    names = ("covariate", "covariate_cut", "covariate_p0", "covariate_p1", "covariate_seen")
    assert [getattr(restored, n) for n in names] == [getattr(mon, n) for n in names]
    unwatched = Monitor()
    watch.load_state(unwatched, watch.saved_state(Monitor()), alpha=0.1, aci=False)
    assert unwatched.covariate_cut is None and unwatched.covariate_seen is None
