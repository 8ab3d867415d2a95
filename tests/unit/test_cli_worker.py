"""`racer-online worker` that cannot start: one line on stderr and exit 1, run as a user
would (a subprocess); no broker is needed to see it (a broker that does not answer:
tests/integration/test_worker.py, with a Redis that does)."""

import os
import socket
import subprocess
import sys

from racer_online.local.processes import free_port


def worker(**env):
    settings = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    return subprocess.run(
        [sys.executable, "-m", "racer_online", "worker"],
        env=settings | {"RACER_WEB_PORT": str(free_port())} | env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_one_line(result, *fragments):
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("racer-online: error: "), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_a_taken_web_port_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = worker(RACER_WEB_PORT=str(port))
    assert_one_line(result, f"127.0.0.1:{port}", "cannot listen")


def test_a_web_server_beyond_loopback_without_a_token_is_one_line():
    result = worker(RACER_WEB_HOST="0.0.0.0")  # no broker needed: refused before it is asked
    assert_one_line(result, "0.0.0.0", "without a token", "RACER_WEB_TOKEN")
