"""The service's semantics on the in-memory store (the Redis twin), one case per test."""

import numpy as np
import pytest

from racer_online import core
from racer_online.errors import StoreUnavailableError
from racer_online.messages import DecisionMessage, FeedbackMessage, QueryMessage
from racer_online.service import RacerService, Rejected, audit_draw, store_config
from racer_online.service.window import quantise
from racer_online.settings import Settings
from racer_online.store import FeedbackOutcome, MemoryStore
from racer_online.store.records import query_hash

SCOPES = """
[scopes.default]
alpha = 0.2
delta = 0.2
bound = "binomial"
rule = "threshold"
miss = "augmented"
[scopes.default.models]
m0 = { price = 0.1 }
m1 = { price = 0.2 }
m2 = { price = 0.9 }
"""
MODELS = ("m0", "m1", "m2")


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def make(tmp_path):
    path = tmp_path / "scopes.toml"
    path.write_text(SCOPES)

    def factory(store=None, **overrides):
        settings = Settings(_env_file=None, scopes_file=path, **({"audit_rate": 1.0} | overrides))
        clock = store.clock if store else Clock()
        store = store or MemoryStore(store_config(settings), clock=clock)
        return RacerService(settings, store, clock=clock)

    return factory


async def tick(service):
    """One leader tick; the thresholds it published."""
    return (await service.leader.recalibrate_due()).thresholds


def query(qid, scores=(0.7, 0.2, 0.4), **kw):
    return QueryMessage(query_id=qid, scores=dict(zip(MODELS, scores, strict=True)), **kw)


def feedback(qid, **labels):
    return FeedbackMessage(scope="default", query_id=qid, labels=labels)


async def test_a_fresh_scope_routes_to_every_option(make):
    [routed] = await make().route([query("q1")])
    decision = routed.decision
    assert DecisionMessage.parse(routed.raw) == decision  # published = decided
    assert decision.threshold_status == "fallback" and decision.lam == 1.0
    assert decision.models == ["m0", "m2", "m1"]  # most promising first
    assert decision.flag_unanswerable and decision.threshold_version == 0


async def test_a_redelivered_query_gets_the_same_decision(make):
    service = make()
    [first] = await service.route([query("q1")])
    service.scopes["default"].threshold = service.scopes["default"].threshold.model_copy(
        update={"lam": 0.5, "version": 7}
    )
    [again] = await service.route([query("q1")])
    assert again == first
    [routed] = await service.route([query("q2")])
    other = routed.decision
    assert other.threshold_version == 7 and other.models == ["m0"]


async def test_a_redelivery_rebuilds_the_first_decision_byte_for_byte(make):
    """The store keeps no decision JSON: the threshold version, lam, status, audit draw and
    decision time it keeps rebuild the published bytes from the redelivered query."""
    service = make(audit_rate=0.3)
    scope = service.scopes["default"]
    scope.apply(scope.threshold.model_copy(update={"lam": 0.5, "status": "stale", "version": 3}))
    rng = np.random.default_rng(5)
    batch = [
        query(f"q{i}", tuple(rng.random(3)), p_abstain=None if i % 2 else float(rng.random()))
        for i in range(60)
    ]
    first = await service.route(batch)
    assert {r.fields["audit"] for r in first} == {True, False}
    scope.apply(scope.threshold.model_copy(update={"lam": 0.9, "status": "certified",
                                                   "version": 9, "audit_rate": 0.5}))  # fmt: skip
    service.clock.now += 3000  # a rebalance later, possibly in the next time slot
    again = await service.route(batch[::-1])
    assert [r.raw for r in again[::-1]] == [r.raw for r in first]
    [fresh] = await service.route([query("new")])
    assert fresh.decision.threshold_version == 9 and fresh.decision.audit_rate == 0.5


async def test_an_id_reused_with_other_scores_is_rejected_and_the_first_decision_stands(make):
    service = make()
    [first] = await service.route([query("q1", (0.7, 0.2, 0.4))])
    [same] = await service.route([query("q1", (0.7, 0.2, 0.4), metadata={"try": "2"})])
    [other] = await service.route([query("q1", (0.7, 0.2, 0.41))])
    assert same.raw == first.raw
    assert other == Rejected(
        "reused_query_id",
        "query id 'q1' was routed before with other scores; its first decision stands",
    )


async def test_bad_queries_are_rejected_with_a_reason(make):
    results = await make().route([
        QueryMessage(query_id="a", scope="nope", scores={"m0": 0.5}),
        QueryMessage(query_id="b", scores={"m0": 0.5, "m1": 0.5, "m2": 0.5, "mX": 0.5}),
        QueryMessage(query_id="c", scores={"m0": 0.5}),
        QueryMessage(query_id="d", text="what is 2 + 2?"),
        query("e"),
    ])  # fmt: skip
    kinds = [r.kind if isinstance(r, Rejected) else "ok" for r in results]
    assert kinds == ["unknown_scope", "unknown_model", "missing_score", "no_scores", "ok"]
    assert results[1].reason == "unknown model 'mX' in scope 'default'"


async def test_feedback_outcomes(make):
    service = make()
    await service.route([query("q1")])
    one_at_a_time = [feedback("q1", m0=1), feedback("q1", m1=0), feedback("q1", m2=0)]
    assert await service.record_feedback(one_at_a_time) == ["joined", "joined", "entered"]
    assert await service.record_feedback([feedback("q1", m0=1)]) == [FeedbackOutcome.DUPLICATE]
    assert await service.record_feedback([feedback("q1", m0=0)]) == [FeedbackOutcome.CONFLICT]
    assert await service.record_feedback([feedback("q9", m0=1, m1=1, m2=1)]) == ["held"]
    late = FeedbackMessage(
        scope="default", query_id="q1", labels={"m0": 1}, event_time=service.clock() - 10**6
    )
    assert await service.record_feedback([late]) == [FeedbackOutcome.LATE]
    rejected = await service.record_feedback([
        FeedbackMessage(query_id="q1", scope="nope", labels={"m0": 1}),
        feedback("q1", mX=1),
    ])  # fmt: skip
    assert [r.kind for r in rejected] == ["unknown_scope", "unknown_model"]


async def test_feedback_before_its_query_joins_when_it_arrives(make):
    service = make()
    assert await service.record_feedback([feedback("early", m0=1, m1=1, m2=0)]) == ["held"]
    await service.route([query("early")])
    [update] = await tick(service)
    assert update.n == 1


async def test_held_feedback_for_a_query_never_routed_is_short_lived(make):
    """Labels of an id that is never routed cost an entry for minutes, not the horizon."""
    service = make(audit_rate=1.0, held_feedback_ttl_s=300)
    both = [feedback(q, m0=1, m1=0, m2=1) for q in ("q", "r")]
    assert await service.record_feedback(both) == ["held", "held"]
    service.clock.now += 299  # within its life: the labels join their query
    await service.route([query("r")])
    service.clock.now += 302  # held at least 300 s, at most 600 s
    await service.route([query("q")])
    [entry] = await service.store.read_window("default")
    assert entry.query == query_hash("r").hex()
    assert not any(service.store._held.values())  # what the held slot's expiry does


def certified(service, lam=0.5):
    """Route on a certified threshold below 1 (at lam = 1 every decision is a full record)."""
    scope = service.scopes["default"]
    scope.apply(scope.threshold.model_copy(update={"lam": lam, "status": "certified"}))


async def test_only_audited_records_enter_the_window(make):
    service = make(audit_rate=0.3)
    certified(service)
    ids = [f"q{i}" for i in range(400)]
    await service.route([query(q) for q in ids])
    await service.record_feedback([feedback(q, m0=1, m1=0, m2=1) for q in ids])
    key = service._audit_key
    audited = sum(audit_draw("default", q, key=key) < 0.3 for q in ids)
    assert len(await service.store.read_window("default")) == audited
    assert 80 < audited < 160  # the draw is a fair coin of rate 0.3


def synthetic(n, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=(n, 3)).round(3)
    labels = rng.uniform(size=(n, 3)) < scores
    return scores, labels


async def feed(service, scores, labels, prefix="q"):
    ids = [f"{prefix}{i}" for i in range(len(scores))]
    await service.route([query(q, tuple(s)) for q, s in zip(ids, scores, strict=True)])
    await service.record_feedback([
        feedback(q, **{m: int(y) for m, y in zip(MODELS, row, strict=True)})
        for q, row in zip(ids, labels, strict=True)
    ])  # fmt: skip


async def test_threshold_equals_the_core_on_the_same_records(make):
    service = make()
    scores, labels = synthetic(300)
    await feed(service, scores, labels)
    [update] = await tick(service)
    scores = quantise(scores)  # what the service decides on and the window holds
    expected = core.calibrate(
        scores,
        labels,
        alpha=0.2,
        delta=0.2,
        rule="threshold",
        miss="augmented",
        p_abstain=quantise(np.prod(1 - scores, axis=1)),
    )
    assert (update.status, update.n, update.m_star) == ("certified", 300, expected.m_star)
    assert update.lam == expected.lam_hat and update.version == 1
    assert update.empirical_risk == pytest.approx(expected.empirical_risk)
    assert update.mean_set_size == pytest.approx(expected.mean_set_size)
    [routed] = await service.route([query("after")])
    decision = routed.decision
    assert decision.lam == update.lam and decision.threshold_status == "certified"


async def test_recalibration_triggers_by_records_and_by_timer(make):
    service = make(recalibrate_every_records=50, recalibrate_interval_s=30, monitor=False)
    scores, labels = synthetic(120)
    assert [u.reason for u in await tick(service)] == ["timer"]  # first look
    await feed(service, scores[:10], labels[:10], prefix="a")
    [update] = await tick(service)
    # Why it recalibrated reads true of the certified row it made (not "uncertified").
    assert update.reason == "until_certified" and update.status == "certified"
    await feed(service, scores[10:60], labels[10:60], prefix="b")
    assert [u.reason for u in await tick(service)] == ["records"]
    await feed(service, scores[60:65], labels[60:65], prefix="c")
    assert await tick(service) == []  # the window grew by under 10%, too early
    await feed(service, scores[65:70], labels[65:70], prefix="d")
    assert [u.reason for u in await tick(service)] == ["records"]  # now by 10 of 60
    await feed(service, scores[70:75], labels[70:75], prefix="e")
    assert await tick(service) == []
    service.clock.now += 31
    [update] = await tick(service)
    assert (update.reason, update.n, update.version) == ("timer", 75, 5)
    service.clock.now += 31
    assert await tick(service) == []  # nothing new


async def test_window_is_trimmed_by_size_and_age(make):
    service = make(window_size=100, window_max_age_s=3600)
    scores, labels = synthetic(250)
    await feed(service, scores[:150], labels[:150], prefix="old")
    service.clock.now += 1800
    await feed(service, scores[150:], labels[150:], prefix="new")
    [update] = await tick(service)
    assert update.n == 100
    window_scores = service.scopes["default"].window.scores[:, :3]
    np.testing.assert_array_equal(window_scores, quantise(scores[150:]))
    service.clock.now += 3601  # every record is now older than the maximum age
    [update] = await tick(service)
    assert update.n == 0 and update.status == "stale"
    assert len(await service.store.read_window("default")) == 0


async def test_status_rule_fallback_certified_stale(make):
    service = make(window_max_age_s=3600)
    scores, labels = synthetic(300)
    await feed(service, scores[:5], labels[:5], prefix="a")  # 5 records certify nothing
    [first] = await tick(service)
    assert (first.status, first.lam, first.m_star) == ("fallback", 1.0, -1)
    await feed(service, scores, labels, prefix="b")
    [certified] = await tick(service)
    assert (certified.status, certified.version) == ("certified", 2)
    service.clock.now += 3601  # the window empties by age; three new records remain
    await feed(service, scores[:3], labels[:3], prefix="c")
    [stale] = await tick(service)
    assert (stale.status, stale.lam, stale.certified, stale.n) == ("stale", certified.lam, False, 3)


async def test_workers_pick_up_the_leaders_threshold(make):
    leader = make()
    follower = make(leader.store)
    scores, labels = synthetic(200)
    await feed(leader, scores, labels)
    [update] = await tick(leader)
    assert [t.version for t in await follower.refresh_thresholds()] == [update.version]
    assert await follower.refresh_thresholds() == []
    [routed] = await follower.route([query("z")])
    decision = routed.decision
    assert decision.threshold_version == update.version


async def test_redis_down_routing_and_feedback_raise_and_publish_nothing(make):
    """No decision leaves the service that Redis does not hold: the worker retries the
    batch, so a redelivery can never be decided again on another threshold."""
    service = make()
    scores, labels = synthetic(200)
    await feed(service, scores, labels)
    [update] = await tick(service)
    service.store.up = False
    with pytest.raises(StoreUnavailableError):
        await service.route([query("while-down")])
    with pytest.raises(StoreUnavailableError):
        await service.record_feedback([feedback("while-down", m0=1)])
    service.store.up = True
    [routed] = await service.route([query("while-down")])  # the retried batch
    assert routed.decision.lam == update.lam
    graded = await service.record_feedback([feedback("while-down", m0=1, m1=0, m2=1)])
    assert graded == [FeedbackOutcome.ENTERED]


async def test_a_query_decided_again_beyond_the_redelivery_horizon_is_marked(make):
    service = make(pending_ttl_s=3600.0)
    sent = service.clock.now
    [first] = await service.route([query("q1")], sent_at=[sent])
    assert first.decision.redecided is False
    service.clock.now += 2 * 3600  # a replay within the horizon: the first decision again
    [again] = await service.route([query("q1")], sent_at=[sent])
    assert again.raw == first.raw
    service.clock.now += 4 * 3600  # past it: the first record has expired with its slot
    [anew] = await service.route([query("q1")], sent_at=[sent])
    assert anew.decision.redecided is True and anew.decision.decided_at == service.clock.now
    [fresh] = await service.route([query("q2")], sent_at=[service.clock.now - 1])
    assert fresh.decision.redecided is False
