"""A worker that cannot reach Redis at start stops in one line, before it joins its
consumer groups; real redis-server instances refuse it (docs/reliability.md)."""

import subprocess

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from racer_online.local.services import free_port
from racer_online.testing import stop_process

pytestmark = pytest.mark.integration


@pytest.fixture
def password_redis(tmp_path):
    """A redis-server of its own that requires the password ``right-one``."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--requirepass", "right-one", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield port
    stop_process(proc, grace=5)


@pytest.fixture(autouse=True)
def scopes_file(deployment):
    deployment.write_scopes(["m0", "m1"])


def started(deployment, **env) -> tuple[int, str]:
    proc = deployment.start_worker(**env)
    proc.wait(timeout=60)
    return proc.returncode, deployment.log(len(deployment.workers) - 1)


async def groups(deployment) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        return [g[0] for g in await admin.list_consumer_groups()]
    finally:
        await admin.close()


async def assert_stopped_in_one_line(deployment, code, log, *fragments):
    assert code == 1, log
    lines = log.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("racer-online: error: cannot reach Redis"), log
    assert all(f in lines[0] for f in fragments), lines[0]
    app_id = deployment.env["RACER_APP_ID"]
    assert not [g for g in await groups(deployment) if g.startswith(app_id)]


async def test_a_port_nothing_listens_on_stops_the_worker_before_it_joins(deployment):
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    code, log = started(deployment, RACER_REDIS_URL=nobody)
    await assert_stopped_in_one_line(deployment, code, log, nobody, "RACER_REDIS_URL")


async def test_a_wrong_password_stops_the_worker_with_the_password_masked(
    deployment, password_redis
):
    url = f"redis://:wrong-one@127.0.0.1:{password_redis}/0"
    code, log = started(deployment, RACER_REDIS_URL=url)
    masked = f"redis://:***@127.0.0.1:{password_redis}/0"
    await assert_stopped_in_one_line(deployment, code, log, masked, "password")
    assert "wrong-one" not in log


async def test_no_password_for_a_server_that_requires_one_stops_the_worker(
    deployment, password_redis
):
    url = f"redis://127.0.0.1:{password_redis}/0"
    code, log = started(deployment, RACER_REDIS_URL=url)
    await assert_stopped_in_one_line(deployment, code, log, url, "uthentication")
