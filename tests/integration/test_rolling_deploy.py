"""A scope added during a rolling deploy: its messages reach workers that do not know it yet.
They wait, parked on the retry topic, until a worker that knows the scope reads them, and
are dead-lettered only once the grace since a worker first saw them is over."""

import pytest

from racer_online.messages import DeadLetter
from racer_online.testing import until

pytestmark = pytest.mark.integration

MODELS = ("m0", "m1")


def query(query_id: str, scope: str) -> dict[str, object]:
    return {"query_id": query_id, "scope": scope, "scores": {"m0": 0.7, "m1": 0.2}}


async def held(deployment) -> bool:
    """Whether a record was parked on the retry topic."""
    return bool(await deployment.collect("queries_retry", 1, timeout=1))


def write_scopes(deployment, *scopes: str) -> None:
    tables = [f"[scopes.{name}]\nalpha = 0.1\ndelta = 0.1\n[scopes.{name}.models]\n"
              "m0 = { price = 0.1 }\nm1 = { price = 0.2 }\n" for name in scopes]  # fmt: skip
    deployment.scopes_file.write_text("\n".join(tables))


async def test_a_new_scope_waits_for_an_upgraded_worker_instead_of_the_dlq(deployment):
    new_scope = f"{deployment.scope}-new"
    write_scopes(deployment, deployment.scope)
    old = deployment.start_worker(RACER_UNKNOWN_SCOPE_GRACE_S="300")
    await deployment.send("queries", [query("q-new", new_scope)])
    await until(lambda: held(deployment), timeout=60, what="the query parked")
    # The rolling deploy: the new scopes file, the old worker replaced by an upgraded one.
    write_scopes(deployment, deployment.scope, new_scope)
    deployment.kill(old, sig=15)
    deployment.start_worker(RACER_UNKNOWN_SCOPE_GRACE_S="300")
    [decision] = await deployment.collect("decisions", 1, timeout=90)
    assert (decision["query_id"], decision["scope"]) == ("q-new", new_scope)
    assert await deployment.collect("dlq", 1, timeout=2) == []


async def test_an_unknown_scope_older_than_the_grace_goes_to_the_dlq(deployment):
    write_scopes(deployment, deployment.scope)
    deployment.start_worker(RACER_UNKNOWN_SCOPE_GRACE_S="3")
    routing = f"BatchConsumer({deployment.topics['queries']}): assigned partitions [0, 1, 2, 3]"
    await until(lambda: routing in deployment.log(0), timeout=60, what="the worker routing")
    await deployment.send("queries", [query("q-typo", "no-such-scope")])
    [letter] = await deployment.collect("dlq", 1, timeout=90)
    assert DeadLetter.model_validate(letter).reason == "unknown scope 'no-such-scope'"
    assert await held(deployment)  # it waited first
