"""Redis loses a scope's state under two workers (one leads): both stop routing on the
threshold they held, the leader reads the new state afresh and raises ``state_lost``, a
write under the old epoch is refused, and the new state's first threshold is applied by
both although its version is lower. On the in-memory twin, a real Redis and a Cluster.
"""

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from test_leader_lease import stream, two_workers  # noqa: F401 (a fixture)

from racer_online.errors import FencedError
from racer_online.messages import QueryMessage, ThresholdMessage
from racer_online.store import MemoryStore
from racer_online.store import keys as redis_keys


async def wipe(store, scope):
    """FLUSHALL: every key of the scope gone (the test's own keys only, on Redis)."""
    if isinstance(store, MemoryStore):
        store.flush()
        return
    client, pattern = store.client, f"racer:{{{scope}}}:*"
    where = {"target_nodes": "all"} if isinstance(client, RedisCluster) else {}
    for key in [k async for k in client.scan_iter(match=pattern, **where)]:
        await client.delete(key)


async def go_back(store, scope, threshold: bytes):
    """A replica promoted without the last writes: the stored threshold is an older one."""
    if isinstance(store, MemoryStore):
        store._thresholds[scope] = (ThresholdMessage.parse(threshold).version, threshold)
    else:
        await store.client.hset(redis_keys.threshold(scope), "json", threshold)


def resets(scope):
    return REGISTRY.get_sample_value("racer_state_resets_total", {"scope": scope}) or 0.0


def query(scope, qid):
    return QueryMessage(query_id=qid, scope=scope, scores={"m0": 0.9, "m1": 0.5, "m2": 0.1})


async def certified(leader_service, follower, scope, rng, first):
    """Stream until the leader certifies a threshold below 1; the follower polls it."""
    for start in range(first, first + 2000, 100):
        await stream(follower, scope, rng, start, 100)
        updates = (await leader_service.leader.recalibrate_due()).thresholds
        if updates and updates[-1].certified and updates[-1].lam < 1:
            await follower.refresh_thresholds()
            return updates[-1]
    raise AssertionError("no certified threshold")


async def test_a_wiped_redis_is_survived_by_both_workers(two_workers):  # noqa: F811
    scope, _, _, (a, b) = two_workers
    rng = np.random.default_rng(3)
    held = await certified(a, b, scope, rng, 0)
    assert b.scopes[scope].threshold == held  # b routes on it
    old_epoch, old_incarnation = a.leader.lease.epochs[scope], a.scopes[scope].incarnation
    before = resets(scope)

    await wipe(a.store, scope)
    [routed] = await b.route([query(scope, "after-1")])
    assert routed.fields["lam"] == 1.0 and routed.fields["threshold_status"] == "fallback"
    assert b.scopes[scope].incarnation > old_incarnation
    assert not b.fresh_thresholds()[scope]  # /ready is false until one certifies again

    # The leader finds out at its next tick, and raises the alert once it leads again.
    assert (await a.leader.recalibrate_due()).alerts == []
    with pytest.raises(FencedError):
        await a.store.save_threshold(scope, 10_000, b"{}", epoch=old_epoch)
    [alert] = (await a.leader.recalibrate_due()).alerts
    assert alert.kind == "state_lost" and alert.evidence["threshold_version_dropped"]
    assert a.leader.lease.epochs[scope] > old_epoch
    assert resets(scope) == before + 2  # each worker dropped what it held

    new = await certified(a, b, scope, rng, 5000)
    stored = [ThresholdMessage.parse(raw) for raw in await a.store.threshold_history(scope)]
    assert stored[0].version == 1  # versions count from 1 in the new state...
    assert {t.incarnation for t in stored} == {b.scopes[scope].incarnation}  # ...ordered by it
    assert b.scopes[scope].threshold == new and b.fresh_thresholds()[scope]
    # The leader read the new state afresh: its window is the records Redis holds now.
    assert len(a.scopes[scope].window) == len(await a.store.read_window(scope))


async def test_a_threshold_gone_back_resets_the_workers_that_held_it(two_workers):  # noqa: F811
    """A replica promoted without the last writes holds an older threshold than the one the
    workers route on: they drop it as they drop the state of another incarnation."""
    scope, _, _, (a, b) = two_workers
    rng = np.random.default_rng(4)
    first = await certified(a, b, scope, rng, 0)
    later = await certified(a, b, scope, rng, 3000)
    assert later.version > first.version
    before = resets(scope)
    await go_back(a.store, scope, first.to_bytes())
    await b.refresh_thresholds()
    assert resets(scope) == before + 1
    # Reset, it routes on the threshold Redis holds: computed on records Redis holds too.
    assert b.scopes[scope].threshold == first
