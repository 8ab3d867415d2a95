"""The pieces of the retry path that need no broker: a parked record round trip, the
outage log's two lines, the scopes whose traffic is all dead-lettered."""

import logging

import pytest
from aiokafka import ConsumerRecord

from racer_online.kafka import retries
from racer_online.messages import MessageError
from racer_online.service.dead_scopes import MAX_SCOPES, DeadScopes
from racer_online.service.outages import OutageLog


def record(value: bytes | None, *, topic: str = "racer.queries", offset: int = 7):
    return ConsumerRecord(topic=topic, partition=2, offset=offset, timestamp=10**15,
                          timestamp_type=0, key=b"q-1", value=value, checksum=None,
                          serialized_key_size=3, serialized_value_size=0, headers=())  # fmt: skip


def test_a_parked_record_comes_back_as_it_was_with_the_clock_of_its_first_sight():
    original = record(b'{"query_id": "q-1", "scope": "new"}')
    seen = retries.Seen(original, first_seen=100.0)
    topic, key, value = retries.park(
        "racer.queries.retry", seen, "unknown_scope", "unknown scope 'new'",
        delay_s=5, clock=lambda: 130.0,
    )  # fmt: skip
    assert (topic, key) == ("racer.queries.retry", b"q-1")
    back, parked = retries.unpark(record(value, topic="racer.queries.retry", offset=0))
    assert back.first_seen == 100.0 and parked.due == 135.0  # not the producer's timestamp
    assert (back.record.topic, back.record.partition, back.record.offset) == (
        "racer.queries", 2, 7)  # fmt: skip
    assert (back.record.key, back.record.value) == (original.key, original.value)


@pytest.mark.parametrize("value", [None, b"{}", b"not json"])
def test_a_record_that_is_not_a_parked_one_is_a_message_error(value):
    with pytest.raises(MessageError):
        retries.unpark(record(value))


def test_an_outage_is_logged_when_it_starts_and_when_it_ends(caplog):
    outage = OutageLog(logging.getLogger("test"), "keeping the thresholds in memory")
    with caplog.at_level(logging.WARNING):
        outage.succeeded()  # nothing to say while all is well
        for _ in range(111):
            outage.failed(RuntimeError("redis unavailable: refused"))
        outage.succeeded()
        outage.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("keeping the thresholds in memory: redis unavailable: refused")
    assert "over after 111 failed attempts" in lines[1]


def test_only_scopes_with_dead_letters_and_nothing_else_are_named():
    scopes = DeadScopes()
    scopes.dead("typo", "unknown_scope")
    scopes.dead("typo", "unknown_scope")
    scopes.dead("live", "missing_score")
    scopes.passed("live")
    [dead] = scopes.take()
    assert dead == ("typo", 2, {"unknown_scope": 2})
    assert scopes.take() == []  # counted afresh after each look


def test_a_flood_of_scope_names_stays_bounded():
    scopes = DeadScopes()
    for i in range(10 * MAX_SCOPES):
        scopes.dead(f"typo-{i}", "unknown_scope")
    assert len(scopes.take()) == MAX_SCOPES
