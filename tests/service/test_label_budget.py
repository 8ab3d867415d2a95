"""The online loop at a realistic label budget: one test per defect of the old loop."""

import inspect

import numpy as np

from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, audit_draw, store_config
from racer_online.service import drift as watch
from racer_online.service.scope import Monitor
from racer_online.settings import Settings
from racer_online.store import MemoryStore
from racer_online.store.records import query_hash

MODELS = ("m0", "m1", "m2")


class Clock:
    now = 1_800_000_000.0

    def __call__(self):
        return self.now


def make(tmp_path, extra="", **overrides):
    path = tmp_path / "scopes.toml"
    path.write_text(
        f"[scopes.default]\nalpha = 0.1\ndelta = 0.1\n{extra}\n"
        "[scopes.default.models]\nm0 = { price = 1 }\nm1 = { price = 2 }\nm2 = { price = 3 }\n"
    )
    settings = Settings(_env_file=None, scopes_file=path, **overrides)
    clock = Clock()
    return RacerService(settings, MemoryStore(store_config(settings), clock=clock), clock=clock)


def query(qid, scores=(0.8, 0.15, 0.05), **kw):
    return QueryMessage(query_id=qid, scores=dict(zip(MODELS, scores, strict=True)), **kw)


def certify(service, lam=0.5):
    scope = service.scopes["default"]
    scope.apply(scope.threshold.model_copy(update={"lam": lam, "status": "certified"}))


async def test_uncertified_aci_means_fallback_not_stale(tmp_path):
    """Defect 1: alpha_t <= 0 asks for lam = 1; keeping the last threshold as stale broke
    Gibbs and Candes's bound (it was 0.895 misses after the accuracies flipped)."""
    service = make(tmp_path, extra="aci_gamma = 0.05", audit_rate=1.0, monitor=False)
    certify(service, lam=0.0)
    scope = service.scopes["default"]
    await service.leader.recalibrate_due()  # loads the monitor state
    scope.apply(scope.threshold.model_copy(update={"lam": 0.0, "status": "certified"}))
    scope.monitor.alpha_t = -7.7
    update = await service.leader.recalibrate("default", reason="test")
    assert update is not None and (update.status, update.lam) == ("fallback", 1.0)


async def test_alpha_t_zero_is_saved_and_restored(tmp_path):
    """Defect 7: ``if mon.alpha_t`` dropped alpha_t = 0.0 from the saved state."""
    state = watch.saved_state(Monitor(alpha_t=0.0))
    assert state["alpha_t"] == "0.0"
    restored = Monitor()
    watch.load_state(restored, state, alpha=0.1, aci=True)
    assert restored.alpha_t == 0.0


async def test_decisions_at_lam_one_are_full_label_records(tmp_path):
    """Defect 4: at lam = 1 every model is invoked and graded; those records were thrown
    away unless drawn for audit. lam_used is fixed before the query, so admitting them
    keeps the window i.i.d. (optional skipping)."""
    service = make(tmp_path, audit_rate=0.0)
    ids = [f"q{i}" for i in range(30)]
    routed = await service.route([query(q) for q in ids])
    assert all(r.fields["audit"] and r.fields["audit_rate"] == 1.0 for r in routed)
    await service.record_feedback(
        [
            FeedbackMessage(scope="default", query_id=q, labels={"m0": 1, "m1": 0, "m2": 0})
            for q in ids
        ]
    )
    assert len(await service.store.read_window("default")) == 30
    certify(service)  # below lam = 1 the base rate applies again
    [r] = await service.route([query("later")])
    assert r.fields["audit"] is False and r.fields["audit_rate"] == 0.0


async def test_the_audit_draw_never_reads_text_or_scores(tmp_path):
    """Defect 6: the draw depends on the scope, the query id and a secret key only."""
    assert set(inspect.signature(audit_draw).parameters) == {"scope", "query_id", "key"}
    a = make(tmp_path, audit_rate=0.5, audit_key="k1")
    b = make(tmp_path, audit_rate=0.5, audit_key="k1")
    certify(a), certify(b)
    ids = [f"q{i}" for i in range(200)]
    got_a = await a.route([query(q, (0.9, 0.05, 0.05), text="one prompt") for q in ids])
    got_b = await b.route([query(q, (0.1, 0.2, 0.7), text="another") for q in ids])
    assert [r.fields["audit"] for r in got_a] == [r.fields["audit"] for r in got_b]


async def test_the_audit_draw_is_keyed(tmp_path):
    """Defect 6: without the key a client that picks its ids picks its audits."""
    ids = [f"q{i}" for i in range(400)]
    draws = {
        key: np.array([audit_draw("default", q, key=key) for q in ids]) for key in (b"a", b"b")
    }
    assert not np.array_equal(draws[b"a"] < 0.5, draws[b"b"] < 0.5)
    assert 0.4 < (draws[b"a"] < 0.5).mean() < 0.6  # still a fair coin under each key


async def test_each_decision_records_its_rate_and_the_segment_raises_it(tmp_path):
    """After an alarm the threshold carries audit rate 1; each decision says its rate."""
    service = make(tmp_path, audit_rate=0.1)
    certify(service)
    scope = service.scopes["default"]
    scope.apply(scope.threshold.model_copy(update={"audit_rate": 1.0}))
    routed = await service.route([query(f"q{i}") for i in range(20)])
    assert all(r.fields["audit"] and r.fields["audit_rate"] == 1.0 for r in routed)


async def test_a_warm_start_routes_certified_from_the_first_tick(tmp_path):
    """A scope can start from an offline records file; the monitor can still overrule it."""
    from racer_online.records import Records, write_records

    rng = np.random.default_rng(5)
    scores = rng.uniform(size=(600, 3))
    labels = (rng.uniform(size=(600, 3)) < scores).astype(float)
    records = Records(tuple(f"r{i}" for i in range(600)), MODELS, scores, labels)
    write_records(tmp_path / "warm.csv", records)
    service = make(tmp_path, extra=f'warm_start = "{tmp_path / "warm.csv"}"', audit_rate=0.1)
    [update] = (await service.leader.recalibrate_due()).thresholds
    assert (update.status, update.n) == ("certified", 600) and update.lam < 1.0
    assert service.scopes["default"].monitor.segment_from is None  # no cold-start segment
    cold = make(tmp_path, audit_rate=0.1)
    [first] = (await cold.leader.recalibrate_due()).thresholds
    assert (first.status, first.lam) == ("fallback", 1.0)


async def test_a_query_redelivered_after_its_ttl_enters_the_window_once(tmp_path):
    """Defect 7: past the pending TTL a redelivered query is decided and graded again; the
    store's stream holds it twice, the leader's window once."""
    service = make(tmp_path, audit_rate=1.0, pending_ttl_s=60)
    full = FeedbackMessage(scope="default", query_id="q", labels={"m0": 1, "m1": 0, "m2": 1})
    for _ in range(2):
        await service.route([query("q")])
        await service.record_feedback([full])
        service.clock.now += 3 * 3600  # its slot expires: an hour after the horizon
    assert len(await service.store.read_window("default")) == 2
    await service.leader.recalibrate_due()
    window = service.scopes["default"].window
    assert len(window) == 1 and window.queries == [query_hash("q").hex()]


async def test_the_leader_enters_an_audit_never_graded_as_a_worst_case(tmp_path):
    """Defect 5: an audit whose grading never completes enters once, after the horizon,
    with the worst case its missing labels allow, and is counted."""
    service = make(tmp_path, audit_rate=1.0, pending_ttl_s=60)
    await service.route([query("graded"), query("dropped")])
    await service.record_feedback([
        FeedbackMessage(scope="default", query_id="graded", labels={"m0": 1, "m1": 0, "m2": 1}),
        # m1, m2 never come
        FeedbackMessage(scope="default", query_id="dropped", labels={"m0": 0}),
    ])  # fmt: skip
    first = (await service.leader.recalibrate_due()).thresholds
    assert len(service.scopes["default"].window) == 1 and first[-1].expired_audits == 0
    service.clock.now += 61  # the horizon of both ends
    [update] = (await service.leader.recalibrate_due()).thresholds
    window = service.scopes["default"].window
    assert window.queries[-1] == query_hash("dropped").hex()
    _, required = service.scopes["default"].window_levels()
    levels = service.scopes["default"].levels(window.scores[:, :3], window.scores[:, 3])
    # m0 wrong, m1 and m2 unknown: the one right model may be the last one ranked.
    assert required[-1] == levels[-1, 1:].max() > required[0]
    assert update.expired_audits == 1
    service.clock.now += 61
    await service.leader.recalibrate_due()
    assert len(window) == 2  # entered once
