"""Redis loses a scope's state under two workers (one leads): both stop routing on the
threshold they held, the leader reads the new state afresh and raises ``state_lost``, a
write under the old epoch is refused, and the new state's first threshold is applied by
both although its version is lower. On the in-memory twin, a real Redis and a Cluster.
"""

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from test_leader_lease import Clock, stream

from racer_online.errors import FencedError
from racer_online.messages import QueryMessage, ThresholdMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore, RedisStore
from racer_online.store import keys as redis_keys


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
async def two_workers(request, redis_ns, tmp_path):
    scopes = tmp_path / "scopes.toml"
    scopes.write_text(
        f"[scopes.{redis_ns}]\nalpha = 0.1\ndelta = 0.1\n[scopes.{redis_ns}.models]\n"
        "m0 = { price = 1 }\nm1 = { price = 2 }\nm2 = { price = 3 }\n"
    )
    settings = Settings(_env_file=None, scopes_file=scopes, audit_rate=1.0, monitor=False)
    clock = Clock()
    if request.param == "memory":
        shared = MemoryStore(store_config(settings), clock=clock)
        stores = [shared, shared]
    else:
        url = request.getfixturevalue(request.param.replace("-", "_") + "_url")
        stores = [RedisStore.from_url(url, store_config(settings)) for _ in range(2)]

    async def wipe():
        """FLUSHALL: every key of the scope gone (the test's own keys only, on Redis)."""
        store = stores[0]
        if isinstance(store, MemoryStore):
            store.flush()
            return
        client = store.client
        pattern = f"racer:{{{redis_ns}}}:*"
        if isinstance(client, RedisCluster):
            found = [k async for k in client.scan_iter(match=pattern, target_nodes="all")]
        else:
            found = [k async for k in client.scan_iter(match=pattern)]
        for key in found:
            await client.delete(key)

    async def go_back(threshold: bytes):
        """A replica promoted without the last writes: the stored threshold is an older one."""
        store = stores[0]
        if isinstance(store, MemoryStore):
            store._thresholds[redis_ns] = (ThresholdMessage.parse(threshold).version, threshold)
        else:
            await store.client.hset(redis_keys.threshold(redis_ns), "json", threshold)

    yield redis_ns, clock, wipe, go_back, [RacerService(settings, s, clock=clock) for s in stores]
    for store in stores:
        await store.close()


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


async def test_a_wiped_redis_is_survived_by_both_workers(two_workers):
    scope, _, wipe, _, (a, b) = two_workers
    rng = np.random.default_rng(3)
    held = await certified(a, b, scope, rng, 0)
    assert b.scopes[scope].threshold == held  # b routes on it
    old_epoch, old_incarnation = a.leader.lease.epochs[scope], a.scopes[scope].incarnation
    before = resets(scope)

    await wipe()
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


async def test_a_threshold_gone_back_resets_the_workers_that_held_it(two_workers):
    """A replica promoted without the last writes holds an older threshold than the one the
    workers route on: they drop it as they drop the state of another incarnation."""
    scope, _, _, go_back, (a, b) = two_workers
    rng = np.random.default_rng(4)
    first = await certified(a, b, scope, rng, 0)
    later = await certified(a, b, scope, rng, 3000)
    assert later.version > first.version
    before = resets(scope)
    await go_back(first.to_bytes())
    await b.refresh_thresholds()
    assert resets(scope) == before + 1
    # Reset, it routes on the threshold Redis holds: computed on records Redis holds too.
    assert b.scopes[scope].threshold == first
