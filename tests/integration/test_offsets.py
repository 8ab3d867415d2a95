"""A worker whose consumer groups have no committed offsets stops with one line, and starts
after the operator's `racer-online offsets reset`."""

import subprocess
import sys

import pytest

from racer_online.testing import until

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "racer_online", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# Tansu keeps a group's generation after its members left, so it refuses the reset's
# commit for good: the operator step is shown on Apache Kafka (docs/operations.md, "Offsets").
@pytest.mark.apache
async def test_a_new_group_waits_for_the_operator_then_reads_from_the_start(deployment):
    deployment.write_scopes(["m0", "m1"])
    query = {"query_id": "q1", "scope": deployment.scope, "scores": {"m0": 0.6, "m1": 0.3}}
    await deployment.send("queries", [query])
    strict = deployment.env | {"RACER_OFFSET_RESET": "none"}
    worker = deployment.start_worker(RACER_OFFSET_RESET="none")
    assert worker.wait(timeout=120) != 0
    group = f"{strict['RACER_APP_ID']}.route"
    log = deployment.log(0)
    assert f"consumer group {group} has no committed offsets" in log
    # The stop is explained in one line, the last, with no traceback anywhere.
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1].startswith("racer-online: error: consumer group ")

    def reset_once_the_group_is_empty() -> subprocess.CompletedProcess[str] | None:
        # Until the broker has dropped the exited worker's members the command refuses.
        done = cli("offsets", "reset", "--to", "earliest", env=strict)
        return None if "has live members" in done.stderr else done

    reset = await until(reset_once_the_group_is_empty, timeout=60, what="an empty group")
    assert reset.returncode == 0, reset.stderr
    lines = reset.stderr.strip().splitlines()
    assert lines[0] == f"{group} on {deployment.topics['queries']}: committed earliest " + (
        "(0: 0, 1: 0, 2: 0, 3: 0)"
    )
    assert len(lines) == 2 and lines[1].startswith(f"{strict['RACER_APP_ID']}.feedback on ")
    deployment.start_worker(RACER_OFFSET_RESET="none")
    [decision] = await deployment.collect("decisions", 1, timeout=90)
    assert decision["query_id"] == "q1"


def test_a_reset_of_a_topic_that_does_not_exist_is_one_line(deployment):
    deployment.write_scopes(["m0", "m1"])  # every command reads the settings, scopes included
    env = deployment.env | {"RACER_TOPICS__QUERIES": f"{deployment.scope}.missing"}
    reset = cli("offsets", "reset", "--to", "latest", "--topic", "queries", env=env)
    assert reset.returncode == 1
    assert reset.stderr.strip() == (
        f"racer-online: error: topic {deployment.scope}.missing does not exist"
    )
