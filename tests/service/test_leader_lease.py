"""Two leaders on one store: the lease's epoch lets only the current one write.

Each test runs two workers' services (two leaders, each with its own view of the scope) on
one store: the in-memory twin with an injected clock, a real Redis and a Redis Cluster. A
lease lapses as its TTL makes it lapse: the clock moves past it (memory), or the key is
deleted (Redis keeps its own time), while the old leader is stalled.
"""

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from racer_online.messages import FeedbackMessage, QueryMessage, ThresholdMessage
from racer_online.service import RacerService, calibration, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore, RedisStore
from racer_online.store import keys as redis_keys

MODELS = ("m0", "m1", "m2")
STALL_S = 30  # a bound on each wait, not a sleep: the waits end as soon as the fact holds


class Clock:
    def __init__(self):
        self.now = time.time()  # Redis stamps window entries with its own time

    def __call__(self):
        return self.now


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
async def two_workers(request, redis_ns, tmp_path):
    """Two services on one store, for the scope ``redis_ns``; ``lapse()`` ends the lease."""
    scopes = tmp_path / "scopes.toml"
    scopes.write_text(
        f"[scopes.{redis_ns}]\nalpha = 0.1\ndelta = 0.1\naci_gamma = 0.01\n"
        f"[scopes.{redis_ns}.models]\nm0 = {{ price = 1 }}\nm1 = {{ price = 2 }}\n"
        "m2 = { price = 3 }\n"
    )
    settings = Settings(_env_file=None, scopes_file=scopes, audit_rate=1.0, leader_lease_s=5)
    clock = Clock()
    if request.param == "memory":
        shared = MemoryStore(store_config(settings), clock=clock)
        stores = [shared, shared]
    else:
        url = request.getfixturevalue(request.param.replace("-", "_") + "_url")
        stores = [RedisStore.from_url(url, store_config(settings)) for _ in range(2)]

    async def lapse():
        if isinstance(stores[0], MemoryStore):
            clock.now += settings.leader_lease_s + 1
        else:
            await stores[0].client.delete(redis_keys.lease(redis_ns))

    yield redis_ns, clock, lapse, [RacerService(settings, store, clock=clock) for store in stores]
    for store in stores:
        await store.close()


async def stream(service, scope, rng, first, n, *, flipped=False):
    """``n`` audited queries, every model graded. The scores say m0 is best; it is right 95%
    of the time, or 5% once the traffic ``flipped`` (m2 then answers)."""
    ids = [f"q{first + i}" for i in range(n)]
    scores = np.tile([0.8, 0.15, 0.05], (n, 1)) + rng.uniform(0, 0.02, (n, 3))
    labels = rng.uniform(size=(n, 3)) < ([0.05, 0.3, 0.9] if flipped else [0.95, 0.3, 0.1])
    await service.route([
        QueryMessage(query_id=q, scope=scope, scores=dict(zip(MODELS, s.tolist(), strict=True)))
        for q, s in zip(ids, scores.round(4), strict=True)
    ])  # fmt: skip
    await service.record_feedback([
        FeedbackMessage(query_id=q, scope=scope,
                        labels={m: int(y) for m, y in zip(MODELS, row, strict=True)})
        for q, row in zip(ids, labels, strict=True)
    ])  # fmt: skip


def fenced_total(scope):
    return REGISTRY.get_sample_value("racer_leader_fenced_total", {"scope": scope}) or 0.0


async def test_a_leader_stalled_in_calibration_is_fenced_and_steps_down(two_workers, monkeypatch):
    scope, _, lapse, (a, b) = two_workers
    rng = np.random.default_rng(1)
    await stream(a, scope, rng, 0, 300)
    [first] = (await a.leader.recalibrate_due()).thresholds
    old_epoch = a.leader.lease.epochs[scope]

    # a's next calibration stalls in its thread until the test lets it go on.
    inside, go_on = threading.Event(), threading.Event()
    real = calibration.next_threshold

    def stalling(state, *args, **kwargs):
        if state is a.scopes[scope]:
            inside.set()
            go_on.wait(STALL_S)
        return real(state, *args, **kwargs)

    monkeypatch.setattr(calibration, "next_threshold", stalling)
    await stream(a, scope, rng, 300, 300)  # enough new records to recalibrate
    stalled_tick = asyncio.create_task(a.leader.recalibrate_due())
    assert await asyncio.to_thread(inside.wait, STALL_S)

    # Meanwhile (the event loop is free: a calibrates in a thread) a's lease lapses, and b
    # takes over as Faust's new leader: it refreshes its thresholds and ticks.
    await lapse()
    await b.refresh_thresholds()
    [taken] = (await b.leader.recalibrate_due()).thresholds
    assert b.leader.lease.epochs[scope] > old_epoch and taken.version == first.version + 1

    fenced_before = fenced_total(scope)
    go_on.set()
    assert (await stalled_tick).thresholds == []  # a's threshold was refused, not published
    assert fenced_total(scope) == fenced_before + 1
    assert scope not in a.leader.lease.epochs  # a stepped down
    stored = [ThresholdMessage.parse(raw) for raw in await a.store.threshold_history(scope)]
    assert [t.version for t in stored] == [first.version, taken.version]
    assert stored[-1] == taken

    # a's next ticks write nothing while b holds the lease; b goes on.
    await stream(b, scope, rng, 600, 100)
    assert (await a.leader.recalibrate_due()).thresholds == []
    [later] = (await b.leader.recalibrate_due()).thresholds
    assert later.version == taken.version + 1
    assert ThresholdMessage.parse(await a.store.load_threshold(scope)) == later


async def test_a_leader_back_after_another_re_reads_the_window_it_replaced(two_workers):
    """While a was away, b saw the traffic change and replaced the window with the decisions
    made after its alarm. Back under a new epoch, a re-reads the window and the monitor's
    state: it does not recalibrate on the old window (thresholds alternating between two
    windows) nor apply an outcome twice to the ACI level."""
    scope, clock, lapse, (a, b) = two_workers
    rng = np.random.default_rng(0)
    for first in range(0, 1000, 50):  # calm traffic: a leads
        await stream(a, scope, rng, first, 50)
        clock.now += 1
        await a.leader.recalibrate_due()
    await lapse()
    for first in range(1000, 2000, 50):  # m0 fails from now on: b leads
        await stream(b, scope, rng, first, 50, flipped=True)
        clock.now += 1
        await b.refresh_thresholds()
        if "confirm" in [t.reason for t in (await b.leader.recalibrate_due()).thresholds]:
            break
    replaced = b.scopes[scope]
    assert replaced.monitor.window_from > 0  # the window restarted at b's alarm
    await b.leader.release()  # b stops
    await a.refresh_thresholds()
    await a.leader.recalibrate_due()  # a is back, under a new epoch
    back = a.scopes[scope]
    assert a.leader.lease.epochs[scope] > 1
    assert back.window.ids == replaced.window.ids
    assert back.monitor.alpha_t == replaced.monitor.alpha_t
