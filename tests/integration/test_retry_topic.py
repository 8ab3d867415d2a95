"""A record that cannot be decided yet leaves the hot path: parked on the retry topic, it
holds back no other record, partition or scope, and goes to the dead-letter topic once the
grace since the worker first saw it is over, whatever the producer's timestamp says."""

import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from racer_online.messages import AlertMessage, DeadLetter
from racer_online.testing import until

pytestmark = pytest.mark.integration

TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000


@pytest.fixture(autouse=True)
def scopes_file(deployment):
    deployment.write_scopes(["m0", "m1"])


def query(query_id: str, scope: str) -> dict[str, object]:
    return {"query_id": query_id, "scope": scope, "scores": {"m0": 0.7, "m1": 0.2}}


async def send_at(deployment, value: dict[str, object], timestamp_ms: int) -> None:
    """One query with the producer's timestamp of our choosing."""
    producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(deployment.topics["queries"], json.dumps(value).encode(),
                                     key=str(value["query_id"]).encode(),
                                     timestamp_ms=timestamp_ms)  # fmt: skip
    finally:
        await producer.stop()


async def routing(deployment) -> None:
    line = f"BatchConsumer({deployment.topics['queries']}): assigned partitions [0, 1, 2, 3]"
    await until(lambda: line in deployment.log(0), timeout=60, what="the worker routing")


def route_group(deployment) -> str:
    return f"{deployment.env['RACER_APP_ID']}.route"


async def test_a_valid_query_after_an_unknown_scope_one_is_decided_while_it_waits(deployment):
    deployment.start_worker(RACER_UNKNOWN_SCOPE_GRACE_S="300")
    await routing(deployment)
    await deployment.send("queries", [query("q-typo", "no-such-scope")])
    valid = [query(f"q-{i}", deployment.scope) for i in range(40)]  # every partition
    await deployment.send("queries", valid)
    decisions = await deployment.collect("decisions", len(valid), timeout=60)
    assert {d["query_id"] for d in decisions} == {q["query_id"] for q in valid}
    # Meanwhile the unknown one waits on the retry topic, its input offset committed.
    [parked] = await deployment.collect("queries_retry", 1, timeout=30)
    assert (parked["error_class"], parked["reason"]) == (
        "unknown_scope",
        "unknown scope 'no-such-scope'",
    )
    await until(lambda: deployment.all_committed("queries", route_group(deployment)),
                timeout=30, what="every input record committed")  # fmt: skip
    assert await deployment.collect("dlq", 1, timeout=1) == []


async def test_a_timestamp_ten_years_ahead_stalls_nothing_and_ends_in_the_dlq(deployment):
    grace_s = 3.0
    deployment.start_worker(RACER_UNKNOWN_SCOPE_GRACE_S=str(grace_s), RACER_RETRY_DELAY_S="0.5",
                            RACER_DEAD_SCOPE_ALERT_S="1")  # fmt: skip
    await routing(deployment)
    sent_at = time.time()
    await send_at(deployment, query("q-future", "no-such-scope"),
                  int(sent_at * 1000) + TEN_YEARS_MS)  # fmt: skip
    valid = [query(f"q-{i}", deployment.scope) for i in range(80)]
    await deployment.send("queries", valid)
    decisions = await deployment.collect("decisions", len(valid), timeout=60)
    assert {d["query_id"] for d in decisions} == {q["query_id"] for q in valid}
    await until(lambda: deployment.all_committed("queries", route_group(deployment)),
                timeout=30, what="every input record committed")  # fmt: skip
    [raw] = await deployment.collect("dlq", 1, timeout=60)
    letter = DeadLetter.model_validate(raw)
    assert (letter.key, letter.reason) == ("q-future", "unknown scope 'no-such-scope'")
    assert letter.source_topic == deployment.topics["queries"]  # where it came from
    assert letter.at >= sent_at + grace_s  # the grace ran on the worker's clock
    # The scope's whole traffic went to the DLQ: an alert names it.
    alerts = await deployment.collect("alerts", 1, timeout=30,
                                      until=lambda got: any(a["kind"] == "all_dead_lettered"
                                                            for a in got))  # fmt: skip
    [alert] = [AlertMessage.model_validate(a) for a in alerts if a["kind"] == "all_dead_lettered"]
    assert alert.scope == "no-such-scope" and alert.evidence["dead_letters"] == 1
