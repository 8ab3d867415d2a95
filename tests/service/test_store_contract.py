"""One contract, two stores: the in-memory twin must behave like Redis."""

from functools import partial

import pytest
import redis.asyncio as aioredis

from racer_online.errors import FencedError, StateLostError
from racer_online.store import (
    FeedbackOutcome,
    LabelWrite,
    Lease,
    MemoryStore,
    PendingWrite,
    RedisStore,
    StoreConfig,
    SweepResult,
)
from racer_online.store import keys as redis_keys
from racer_online.store.records import covariate_flags, query_hash

MODELS = ("m0", "m1", "m2")


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_store(request, redis_ns):
    made = []

    def factory(*, window_size=100, ttl=60.0):
        catalogues = {redis_ns: MODELS, f"{redis_ns}-b": ("x", "y")}
        config = StoreConfig(catalogues, pending_ttl_s=ttl, window_size=window_size)
        if request.param == "memory":
            store = MemoryStore(config, clock=Clock())
        else:
            url = request.getfixturevalue(request.param.replace("-", "_") + "_url")
            store = RedisStore.from_url(url, config, clock=Clock())
        made.append(store)
        return store

    factory.scope = redis_ns
    factory.other_scope = f"{redis_ns}-b"
    yield factory
    for store in made:
        await store.close()


NOW = Clock().now


def pending(scope, qid, *, audit=True, lam=0.5, version=1):
    return PendingWrite(scope, qid, b"\x00\x01", lam, audit, (0,), NOW, version, "stale", 0.25)


def labels(scope, qid, **values):
    return LabelWrite(scope, qid, values)


async def lead(store, scope, holder="leader"):
    """Take the scope's lease: the leader's writes carry its epoch."""
    lease = await store.hold_lease(scope, holder, ttl_s=60, last_epoch=None)
    assert lease.holder == holder
    return lease.epoch


async def leader_sweep(store, scope):
    """The leader's sweep of the scope, under its lease."""
    return partial(store.sweep_expired_audits, scope, epoch=await lead(store, scope))


async def test_route_is_idempotent(make_store):
    store, scope = make_store(), make_store.scope
    first = await store.route([pending(scope, "q1")])
    again = await store.route([pending(scope, "q1", lam=0.75, version=2)])
    assert first[0].created and first[0].first is None and not again[0].created
    # What rebuilds the first decision with the query (service/racer.py).
    stored = again[0].first
    assert (stored.version, stored.lam, stored.status, stored.audit) == (1, 0.5, "stale", True)
    assert (stored.decided_at, stored.audit_rate, stored.invoked) == (NOW, 0.25, 0b1)


async def test_a_batch_mixes_scopes_and_repeats_in_order(make_store):
    store, a, b = make_store(), make_store.scope, make_store.other_scope
    await store.feedback([labels(b, "q1", x=1, y=0)])  # held: completes q1 of b when routed
    writes = [pending(a, "q1"), pending(b, "q1"), pending(a, "q1", version=2)]
    results = await store.route([*writes, pending(b, "q2")])
    assert [(r.created, r.entered) for r in results] == [
        (True, False), (True, True), (False, False), (True, False)
    ]  # fmt: skip
    assert results[2].first.version == 1
    outcomes = await store.feedback([
        labels(a, "q1", m0=1), labels(b, "q2", x=0, y=0), labels(a, "q1", m0=0),
        labels(a, "q1", m1=1, m2=1),
    ])  # fmt: skip
    assert outcomes == ["joined", "entered", "conflict", "entered"]
    assert [e.labels for e in await store.read_window(b)] == ["10", "00"]
    assert [e.labels for e in await store.read_window(a)] == ["111"]


async def test_audited_record_enters_once_whatever_the_order(make_store):
    store, scope = make_store(), make_store.scope
    await store.route([pending(scope, "q1", lam=0.25)])
    outcomes = await store.feedback([labels(scope, "q1", m0=1), labels(scope, "q1", m1=0)])
    assert outcomes == [FeedbackOutcome.JOINED, FeedbackOutcome.JOINED]
    assert await store.feedback([labels(scope, "q1", m2=1)]) == [FeedbackOutcome.ENTERED]
    assert await store.feedback([labels(scope, "q1", m0=1, m1=0, m2=1)]) == [
        FeedbackOutcome.DUPLICATE
    ]
    [entry] = await store.read_window(scope)
    assert (entry.labels, entry.lam, entry.scores) == ("101", 0.25, b"\x00\x01")
    assert entry.query == query_hash("q1").hex()


async def test_feedback_before_its_query_is_held_then_joined(make_store):
    store, scope = make_store(), make_store.scope
    assert await store.feedback([labels(scope, "q2", m0=0, m1=1, m2=1)]) == [FeedbackOutcome.HELD]
    assert await store.read_window(scope) == []
    [result] = await store.route([pending(scope, "q2")])
    assert result.created and result.entered
    assert [e.labels for e in await store.read_window(scope)] == ["011"]


async def test_unaudited_and_conflicting_feedback(make_store):
    store, scope = make_store(), make_store.scope
    await store.route([pending(scope, "q3", audit=False)])
    assert await store.feedback([labels(scope, "q3", m0=1, m1=1, m2=1)]) == [FeedbackOutcome.JOINED]
    assert await store.feedback([labels(scope, "q3", m0=0)]) == [FeedbackOutcome.CONFLICT]
    assert await store.read_window(scope) == []


async def test_window_reads_incrementally_and_trims(make_store):
    store, scope = make_store(window_size=1000), make_store.scope
    for i in range(5):
        await store.route([pending(scope, f"q{i}")])
        await store.feedback([labels(scope, f"q{i}", m0=1, m1=1, m2=0)])
    entries = await store.read_window(scope)
    assert len(entries) == 5
    assert [e.id for e in await store.read_window(scope, after=entries[1].id)] == [
        e.id for e in entries[2:]
    ]
    await store.trim_window(scope, min_id=entries[3].id, epoch=await lead(store, scope))
    assert [e.id for e in await store.read_window(scope)] == [e.id for e in entries[3:]]


async def test_thresholds_keep_only_newer_versions(make_store):
    store, scope = make_store(), make_store.scope
    assert await store.load_threshold(scope) is None
    epoch = await lead(store, scope)
    assert await store.save_threshold(scope, 1, b"one", epoch=epoch)
    assert await store.save_threshold(scope, 2, b"two", epoch=epoch)
    assert not await store.save_threshold(scope, 2, b"an older version", epoch=epoch)
    assert await store.load_threshold(scope) == b"two"
    assert await store.threshold_history(scope) == [b"one", b"two"]
    assert await store.ping()


async def test_redis_keys_share_one_cluster_slot(redis_url, redis_ns):
    config = StoreConfig({redis_ns: MODELS}, pending_ttl_s=60, window_size=10)
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client, config, clock=lambda: DECIDED)
        await store.route([audit_at(redis_ns, "q", audit=False), audit_at(redis_ns, "qa")])
        [(key, record)] = await store.pending_records(redis_ns, ["q"])
        assert not record.audit
        # The slot's keys live until one slot (an hour) after the horizon of its last
        # decision, whatever the decision: the sweep's grace period.
        slot_end = (DECIDED // 3600 + 1) * 3600
        left_ms = (slot_end + 3600 + 60 - DECIDED) * 1000
        assert left_ms - 5_000 < await client.pttl(key) <= left_ms
        names = [key, redis_keys.window(redis_ns), redis_keys.threshold(redis_ns),
                 redis_keys.history(redis_ns), redis_keys.audits(redis_ns),
                 redis_keys.counters(redis_ns), redis_keys.slots(redis_ns),
                 redis_keys.held(redis_ns, 1), redis_keys.lease(redis_ns),
                 redis_keys.epoch(redis_ns), redis_keys.outbox(redis_ns)]  # fmt: skip
    finally:
        await client.aclose()
    assert all(f"{{{redis_ns}}}" in name for name in names)


async def test_upper_bound_counts_fully_graded_invoked_models(make_store):
    store, scope = make_store(), make_store.scope

    def routed(qid, invoked):
        return PendingWrite(scope, qid, b"s", 0.5, False, invoked, NOW)

    await store.route([routed("a", (0, 2)), routed("b", (1,)), routed("c", ())])
    # c abstained: no invoked model, so its (vacuous) all-wrong counts at once.
    assert await store.upper_bound(scope) == (1, 1)
    await store.feedback([labels(scope, "a", m0=0)])
    assert await store.upper_bound(scope) == (1, 1)  # m2 not graded yet
    await store.feedback([labels(scope, "a", m2=0), labels(scope, "b", m1=1)])
    await store.feedback([labels(scope, "a", m0=0, m2=0)])  # a redelivery counts nothing
    assert await store.upper_bound(scope) == (3, 2)


async def test_covariate_flags_are_counted_once_per_stored_decision(make_store):
    store, scope, other = make_store(), make_store.scope, make_store.other_scope
    flags = covariate_flags(0.5, [0.2, 0.7, 0.4])  # two of three below the cut
    writes = [pending(scope, f"q{i}", audit=i == 0)._replace(covariate=f)
              for i, f in enumerate(flags)]  # fmt: skip
    unwatched = pending(scope, "q3")._replace(covariate=covariate_flags(None, [0.1])[0])
    await store.route([*writes, unwatched, pending(other, "q0")._replace(covariate=flags[0])])
    assert await store.covariate_counts(scope) == (3, 2)
    await store.route(writes[:2])  # a redelivery counts nothing
    assert await store.covariate_counts(scope) == (3, 2)
    assert await store.covariate_counts(other) == (1, 1)
    assert await store.upper_bound(scope) == (0, 0)  # its own counters


async def test_alerts_and_monitor_state(make_store):
    store, scope = make_store(), make_store.scope
    epoch = await lead(store, scope)
    await store.save_alert(scope, b"first", epoch=epoch)
    await store.save_alert(scope, b"second", epoch=epoch)
    assert await store.alerts(scope) == [b"first", b"second"]
    await store.save_monitor(scope, {"alpha_t": "0.1", "last_id": "5-0"}, epoch=epoch)
    await store.save_monitor(scope, {"alpha_t": "0.12"}, epoch=epoch)
    assert await store.load_monitor(scope) == {"alpha_t": "0.12", "last_id": "5-0"}


async def test_the_outbox_lists_alerts_after_the_mark_and_keeps_its_marks(make_store):
    store, scope = make_store(), make_store.scope
    epoch = await lead(store, scope)
    await store.save_alert(scope, b"published before the outbox", epoch=epoch)
    await store.start_outbox(scope, epoch=epoch)  # starts after the newest alert
    await store.save_alert(scope, b"a", epoch=epoch)
    await store.save_alert(scope, b"b", epoch=epoch)
    mark = (await store.load_outbox(scope))["alert"]
    after = await store.alerts_after(scope, mark)
    assert [raw for _, raw in after] == [b"a", b"b"]
    assert await store.alerts_after(scope, mark, count=1) == after[:1]
    await store.save_outbox(scope, {"alert": after[0][0], "threshold": "3"}, epoch=epoch)
    await store.start_outbox(scope, epoch=epoch)  # a mark once set stays
    assert await store.load_outbox(scope) == {"alert": after[0][0], "threshold": "3"}
    assert await store.alerts_after(scope, after[0][0]) == after[1:]
    assert await store.alerts_after(scope, after[1][0]) == []
    await lapse(store, scope)
    await lead(store, scope, "another")
    with pytest.raises(FencedError, match="superseded"):
        await store.save_outbox(scope, {"threshold": "9"}, epoch=epoch)


async def test_a_batch_longer_than_one_script_call_keeps_its_order(make_store):
    store, scope = make_store(window_size=1000), make_store.scope
    ids = [f"q{i}" for i in range(250)]  # three script calls of at most 100 records
    routed = await store.route([pending(scope, qid, version=i) for i, qid in enumerate(ids)])
    assert all(r.created for r in routed)
    again = await store.route([pending(scope, qid) for qid in reversed(ids)])
    assert [r.first.version for r in again] == list(reversed(range(250)))
    first = [labels(scope, qid, m0=1, m1=0, m2=1) for qid in ids]
    later = [labels(scope, qid, m0=0) for qid in ids]  # the first label of a model wins
    outcomes = await store.feedback(first + later)
    assert outcomes == ["entered"] * 250 + ["conflict"] * 250
    assert [e.labels for e in await store.read_window(scope)] == ["101"] * 250


async def test_window_entries_keep_the_decision_time(make_store):
    """A restarted window keeps only decisions made after an alarm: both stores say when."""
    store, scope = make_store(), make_store.scope
    write = PendingWrite(scope, "q1", b"\x00\x01", 0.25, True, (0,), 1_700_000_123.5)
    await store.route([write])
    await store.feedback([labels(scope, "q1", m0=1, m1=0, m2=1)])
    [entry] = await store.read_window(scope)
    assert (entry.decided_at, entry.lam) == (1_700_000_123.5, 0.25)
    assert entry.query == query_hash("q1").hex()  # the leader keeps a query once


DECIDED = 1_700_000_000.0  # decision time of the sweep tests' records; their TTL is 60 s


def audit_at(scope, qid, *, audit=True):
    return PendingWrite(scope, qid, b"\x00\x01", 0.25, audit, (0,), DECIDED)


async def test_an_expired_incomplete_audit_enters_once_as_a_worst_case(make_store):
    store, scope = make_store(), make_store.scope
    sweep = await leader_sweep(store, scope)
    await store.route([audit_at(scope, "q1"), audit_at(scope, "u1", audit=False)])
    await store.feedback([labels(scope, "q1", m0=1), labels(scope, "u1", m0=1)])
    assert await sweep(now=DECIDED + 59) == SweepResult(0, 0, 0)
    assert await sweep(now=DECIDED + 61) == SweepResult(1, 0, 1)
    [entry] = await store.read_window(scope)  # m1 and m2 were never graded
    assert (entry.labels, entry.lam, entry.decided_at) == ("1??", 0.25, DECIDED)
    assert entry.query == query_hash("q1").hex()
    assert await sweep(now=DECIDED + 62) == SweepResult(0, 0, 1)
    # A label that comes after the sweep (the worker drops it as late unless the clocks
    # disagree) never enters the record a second time.
    assert await store.feedback([labels(scope, "q1", m1=1, m2=1)]) == ["joined"]
    assert len(await store.read_window(scope)) == 1


async def test_a_completed_audit_is_only_removed_from_the_sweep(make_store):
    store, scope = make_store(), make_store.scope
    sweep = await leader_sweep(store, scope)
    await store.route([audit_at(scope, "q1")])
    assert await store.feedback([labels(scope, "q1", m0=1, m1=0, m2=1)]) == ["entered"]
    assert await sweep(now=DECIDED + 61) == SweepResult(0, 0, 0)
    assert [e.labels for e in await store.read_window(scope)] == ["101"]


async def test_a_redelivered_audit_is_swept_once(make_store):
    store, scope = make_store(), make_store.scope
    sweep = await leader_sweep(store, scope)
    await store.route([audit_at(scope, "q1")])
    again = await store.route([audit_at(scope, "q1")])
    assert not again[0].created
    assert await sweep(now=DECIDED + 61) == SweepResult(1, 0, 1)
    assert [e.labels for e in await store.read_window(scope)] == ["???"]


async def test_the_sweep_is_bounded_per_call_and_takes_the_oldest_first(make_store):
    store, scope = make_store(), make_store.scope
    sweep = await leader_sweep(store, scope)
    writes = [audit_at(scope, f"q{i}") for i in range(5)]
    await store.route([w._replace(decided_at=DECIDED + i) for i, w in enumerate(writes)])
    assert await sweep(now=DECIDED + 70, limit=3) == SweepResult(3, 0, 3)
    oldest = [query_hash(f"q{i}").hex() for i in range(3)]
    assert [e.query for e in await store.read_window(scope)] == oldest
    assert await sweep(now=DECIDED + 70) == SweepResult(2, 0, 5)


async def test_an_audit_whose_record_is_gone_is_counted_lost(make_store):
    store, scope = make_store(), make_store.scope
    sweep = await leader_sweep(store, scope)
    await store.route([audit_at(scope, "q1")])
    if isinstance(store, MemoryStore):
        store.clock.now += 2 * 3600 + 61  # past its slot's grace period
    else:
        [(key, _)] = await store.pending_records(scope, ["q1"])
        await store.client.delete(key)  # what its TTL does
    assert await sweep(now=DECIDED + 61) == SweepResult(0, 1, 0)
    assert await store.read_window(scope) == []


# -- The leader's lease and its fencing epoch ----------------------------------------------


async def lapse(store, scope):
    """What the lease's TTL does when its holder stops renewing it."""
    if isinstance(store, MemoryStore):
        store.clock.now += 61
    else:
        await store.client.delete(redis_keys.lease(scope))


async def test_one_holder_at_a_time_renews_its_lease(make_store):
    store, scope, other = make_store(), make_store.scope, make_store.other_scope
    hold = partial(store.hold_lease, ttl_s=60)
    first = (await hold(scope, "a", last_epoch=None)).epoch
    assert await hold(scope, "b", last_epoch=None) == Lease(first, "a")  # refused: a holds it
    assert await hold(scope, "a", last_epoch=first) == Lease(first, "a")  # renewed
    assert (await hold(other, "b", last_epoch=None)).holder == "b"  # one lease per scope


async def test_a_new_holder_fences_every_write_of_the_old_one(make_store):
    store, scope = make_store(), make_store.scope
    await store.route([audit_at(scope, "q1")])
    old = await lead(store, scope, "a")
    await store.save_threshold(scope, 1, b"by a", epoch=old)
    await lapse(store, scope)  # a stalled, or lost Redis for longer than the lease
    new = await lead(store, scope, "b")
    assert new > old
    writes = [
        store.save_threshold(scope, 2, b"by a, stale", epoch=old),
        store.save_alert(scope, b"by a, stale", epoch=old),
        store.save_monitor(scope, {"alpha_t": "0.5"}, epoch=old),
        store.trim_window(scope, min_id="9999999999999-0", epoch=old),
        store.sweep_expired_audits(scope, now=DECIDED + 61, epoch=old),
    ]
    for write in writes:
        with pytest.raises(FencedError, match="superseded"):
            await write
    assert await store.threshold_history(scope) == [b"by a"]
    assert (await store.alerts(scope), await store.load_monitor(scope)) == ([], {})
    assert await store.hold_lease(scope, "a", ttl_s=60, last_epoch=old) == Lease(new, "b")
    # The new holder's writes land, the sweep's included.
    assert await store.sweep_expired_audits(scope, now=DECIDED + 61, epoch=new) == (
        SweepResult(1, 0, 1)
    )
    assert await store.save_threshold(scope, 2, b"by b", epoch=new)


async def test_a_lapsed_lease_nobody_took_keeps_its_epoch(make_store):
    """No other leader wrote in between, so what the holder knows is still current."""
    store, scope = make_store(), make_store.scope
    first = await lead(store, scope, "a")
    await lapse(store, scope)
    assert await store.hold_lease(scope, "a", ttl_s=60, last_epoch=first) == Lease(first, "a")
    await lapse(store, scope)  # a holder that forgot its epoch (it stepped down) starts anew
    anew = await store.hold_lease(scope, "a", ttl_s=60, last_epoch=None)
    assert anew.holder == "a" and anew.epoch > first
    # So does one that asks with another epoch than its live lease's.
    again = await store.hold_lease(scope, "a", ttl_s=60, last_epoch=first)
    assert again.holder == "a" and again.epoch > anew.epoch


async def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(make_store):
    store, scope = make_store(), make_store.scope
    epoch = await lead(store, scope, "a")
    await store.release_lease(scope, "b", epoch=epoch)  # not b's: nothing happens
    assert await store.hold_lease(scope, "b", ttl_s=60, last_epoch=None) == Lease(epoch, "a")
    await store.release_lease(scope, "a", epoch=epoch)
    taken = await store.hold_lease(scope, "b", ttl_s=60, last_epoch=None)
    assert taken.holder == "b" and taken.epoch > epoch


# -- The scope's incarnation: a memory of a state Redis lost is refused ---------------------


async def lose_state(store, scope):
    """Every key of the scope gone (FLUSHALL, a restart without persistence)."""
    if isinstance(store, MemoryStore):
        store.flush()
        return
    for name in ("incarnation", "epoch", "lease", "slots", "threshold", "due-audits"):
        await store.client.delete(f"racer:{{{scope}}}:{name}")


async def test_a_memory_of_a_lost_state_is_refused_and_changes_nothing(make_store):
    store, scope = make_store(), make_store.scope
    known, _ = await store.current(scope)
    assert (await store.current(scope))[0] == known  # begun once, then kept
    await store.route([pending(scope, "q1")._replace(incarnation=known)])
    epoch = await lead(store, scope)
    await lose_state(store, scope)
    stale = [
        store.route([pending(scope, "q2")._replace(incarnation=known)]),
        store.feedback([LabelWrite(scope, "q2", {"m0": 1}, known)]),
        store.hold_lease(scope, "leader", ttl_s=60, last_epoch=epoch, incarnation=known),
    ]
    for call in stale:
        with pytest.raises(StateLostError) as lost:
            await call
        assert lost.value.scope == scope and lost.value.found > known
    found, threshold = await store.current(scope)
    assert found == lost.value.found and threshold is None
    # The refused route stored nothing: q2's first decision is the one made now.
    assert (await store.route([pending(scope, "q2")._replace(incarnation=found)]))[0].created
    # The new state's first epoch is above every epoch granted before it.
    again = await store.hold_lease(scope, "leader", ttl_s=60, last_epoch=epoch, incarnation=found)
    assert again.epoch > epoch
    with pytest.raises(FencedError):
        await store.save_threshold(scope, 10_000, b"stale", epoch=epoch)


# -- A scope whose identity changed, and redeliveries beyond the horizon --------------------


async def test_a_reset_scope_drops_every_record_of_the_old_identity(make_store):
    store, scope = make_store(), make_store.scope
    epoch = await lead(store, scope)
    await store.route([pending(scope, "q1"), pending(scope, "q2", audit=False),
                       pending(scope, "q4")])  # q4: an audit awaiting its grading  # fmt: skip
    await store.feedback([labels(scope, "q1", m0=1, m1=0, m2=1), labels(scope, "q2", m0=1),
                          labels(scope, "q3", m0=1)])  # q3: held  # fmt: skip
    await store.save_monitor(scope, {"identity": "old"}, epoch=epoch)
    await store.save_threshold(scope, 4, b'{"v": 4}', epoch=epoch)
    assert len(await store.read_window(scope)) == 1 and await store.upper_bound(scope) == (1, 0)
    with pytest.raises(FencedError):
        await store.reset_scope(scope, epoch=epoch + 1)
    await store.reset_scope(scope, epoch=epoch)
    assert await leader_sweep_now(store, scope, epoch) == SweepResult(0, 0, 0)  # q4 is gone
    assert await store.read_window(scope) == [] and await store.upper_bound(scope) == (0, 0)
    assert await store.load_monitor(scope) == {}
    assert await store.load_threshold(scope) == b'{"v": 4}'  # it names its identity
    [again] = await store.route([pending(scope, "q1", version=5)])
    assert again.created  # no record of the old identity is found
    [held] = await store.route([pending(scope, "q3")])
    assert held.created and not held.entered  # the held labels went with it


async def leader_sweep_now(store, scope, epoch):
    return await store.sweep_expired_audits(scope, now=NOW + 61, epoch=epoch)


async def test_a_replay_searches_back_to_its_send_time_then_marks_what_is_gone(make_store):
    store, scope = make_store(ttl=86_400.0), make_store.scope
    await store.route([pending(scope, "q1")])
    later = NOW + 5 * 3600  # five slots on: the first decision is still held
    store.clock.now = later
    replayed = pending(scope, "q1", version=2)._replace(decided_at=later, sent_at=NOW)
    [found] = await store.route([replayed])
    assert not found.created and found.first.version == 1  # republished, not decided again
    [lost] = await store.route([replayed._replace(query_id="q9")])  # sent then, never decided
    assert lost.created and not lost.beyond
    store.clock.now = later = NOW + 86_400 + 4 * 3600  # the first slot has expired
    old = pending(scope, "q2")._replace(decided_at=later, sent_at=NOW)
    fresh = pending(scope, "q3")._replace(decided_at=later, sent_at=later - 1)
    gone, new = await store.route([old, fresh])
    assert gone.created and gone.beyond  # sent before the oldest live slot
    assert new.created and not new.beyond
