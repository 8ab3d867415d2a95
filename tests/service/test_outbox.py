"""The leader's outbox on the in-memory store: what Redis holds reaches the topics once.

The broker is a recorder here: a send it fails, a send it leaves unanswered; the broker
itself is stopped for real in tests/integration/test_kafka_output.py.
"""

import asyncio

import pytest

from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore
from racer_online.testing import until

SCOPE = "default"


class Broker:
    """Records what it acknowledged; ``fail`` fails the next send, ``hold`` leaves sends
    unanswered until ``release``."""

    def __init__(self):
        self.topics: dict[str, list[bytes]] = {}
        self.fail = False
        self.held: asyncio.Event | None = None

    async def enqueue(self, records):
        done = asyncio.get_running_loop().create_future()
        if self.fail:
            self.fail = False
            done.set_exception(ConnectionError("the broker is gone"))
            return done

        async def acknowledge():
            if self.held is not None:
                await self.held.wait()
            for topic, _, value in records:
                self.topics.setdefault(topic, []).append(value)
            done.set_result(None)

        asyncio.get_running_loop().create_task(acknowledge())
        return done

    def versions(self, settings):
        return [
            ThresholdMessage.parse(v).version
            for v in self.topics.get(settings.topics.thresholds, [])
        ]

    def alerts(self, settings):
        return [AlertMessage.parse(v).message for v in self.topics.get(settings.topics.alerts, [])]


@pytest.fixture
def leader():
    settings = Settings(_env_file=None, audit_rate=1.0)
    service = RacerService(settings, MemoryStore(store_config(settings)))
    return settings, service.leader


async def stored_alert(leader, text, epoch):
    alert = AlertMessage(scope=SCOPE, kind="drift", message=text)
    await leader.store.save_alert(SCOPE, alert.to_bytes(), epoch=epoch)


async def test_a_failed_send_is_sent_again_and_the_newest_threshold_only(leader):
    settings, leader = leader
    broker = Broker()
    await leader.recalibrate_due()  # the first tick stores v1
    epoch = leader.lease.epochs[SCOPE]
    await stored_alert(leader, "one", epoch)
    broker.fail = True
    assert await leader.outbox.publish(broker.enqueue, wait_s=1) == 2
    assert broker.topics == {}
    v1 = ThresholdMessage.parse(await leader.store.load_threshold(SCOPE))
    newer = v1.model_copy(update={"version": v1.version + 1})
    await leader.store.save_threshold(SCOPE, newer.version, newer.to_bytes(), epoch=epoch)
    await stored_alert(leader, "two", epoch)
    assert await leader.outbox.publish(broker.enqueue, wait_s=1) == 3
    assert broker.versions(settings) == [newer.version]  # v1 superseded: never sent
    assert broker.alerts(settings) == ["one", "two"]
    assert await leader.outbox.publish(broker.enqueue, wait_s=1) == 0  # nothing twice


async def test_an_unanswered_send_is_left_to_the_producer_not_sent_twice(leader):
    settings, leader = leader
    broker = Broker()
    broker.held = asyncio.Event()
    await leader.recalibrate_due()
    assert await leader.outbox.publish(broker.enqueue, wait_s=0.01) == 1
    await stored_alert(leader, "meanwhile", leader.lease.epochs[SCOPE])
    assert await leader.outbox.publish(broker.enqueue, wait_s=0.01) == 0  # still in flight
    broker.held.set()
    await until(lambda: not leader.outbox.sending, timeout=5, what="the acknowledgement")
    assert await leader.outbox.publish(broker.enqueue, wait_s=1) == 1  # the alert only
    assert len(broker.versions(settings)) == 1 and broker.alerts(settings) == ["meanwhile"]


async def test_a_new_leader_publishes_what_the_old_one_stored_and_never_sent(leader):
    settings, old = leader
    await old.recalibrate_due()
    await stored_alert(old, "stored, then the leader died", old.lease.epochs[SCOPE])
    await old.release()
    successor = RacerService(settings, old.store).leader
    broker = Broker()
    await successor.recalibrate_due()
    await successor.outbox.publish(broker.enqueue, wait_s=1)
    assert broker.versions(settings) and broker.alerts(settings) == ["stored, then the leader died"]
