"""The README's "Run it by hand" block, run as written in a shell: if the README drifts from
what the commands do, this breaks."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racer_online.local.processes import free_port
from racer_online.testing import ProcessStat

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> list[str]:
    """The indented lines of the README's "Run it by hand" block, comments and all."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run it by hand\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\n((?: {4}.*\n)+)", section)
    assert block is not None, "no command block under 'Run it by hand'"
    return [line[4:] for line in block.group(1).splitlines()]


def test_the_walkthrough_block_is_found() -> None:
    lines = walkthrough()
    assert lines[0].startswith(". .venv/bin/activate")
    assert lines[-1].startswith("kill $RACER_DEV_SERVICES_PID")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path, broker_kind: str) -> None:
    lines = walkthrough()
    if broker_kind == "apache":
        lines = [line.replace("dev-services --env", "dev-services --broker apache --env")
                 for line in lines]  # fmt: skip
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the virtualenv the tests run in
    # The machine is shared: the dashboard on a free port (the block reads RACER_WEB_PORT).
    # If a step fails, the trap still stops what the block started.
    script = "\n".join([
        "set -euo pipefail",
        'trap \'kill %1 2>/dev/null; kill "${RACER_DEV_SERVICES_PID:-}" 2>/dev/null; true\' EXIT',
        *lines,
        'echo "services pid $RACER_DEV_SERVICES_PID"',
    ])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    env["RACER_WEB_PORT"] = str(free_port())
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    out, err = done.stdout, done.stderr

    # The worker said what it serves, and no Faust INFO line came with it.
    log = (tmp_path / "worker.log").read_text()
    assert log.startswith("racer-online worker: scopes default (9 models: "), log[:500]
    assert "broker kafka://127.0.0.1:" in log.splitlines()[0]
    assert "[INFO] [^Worker]" not in log
    # Calibration: the first part's labels certified a threshold before the rest came.
    assert "published 1000 queries" in err and "published 2671 queries" in err
    assert "not every scope certified" not in err
    current = out.split("RACER thresholds", 1)[1].splitlines()[2]
    assert current.split()[2] == "certified" and float(current.split()[3]) < 1
    # The rest was routed to real sets: the route decision holds fewer than all 9 models.
    decision = out.split("RACER decisions (current stored thresholds)", 1)[1].splitlines()[2]
    assert "certified" in decision and decision.count(",") < 8
    # Drift monitoring, offsets, the dashboard and the report.
    assert "RACER threshold monitor" in out and "realised" in out
    shown = out.split("The workers' consumer groups", 1)[1]
    assert "racer-online.route" in shown and "racer-online.feedback" in shown
    assert "<html" in (tmp_path / "dashboard.html").read_text()
    assert (tmp_path / "report" / "report.html").exists()
    # The last kill stops the services (they stop their broker and Redis first).
    pid = int(out.rsplit("services pid ", 1)[1].split()[0])
    deadline = time.monotonic() + 60
    while ProcessStat.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ProcessStat.alive(pid), "kill $RACER_DEV_SERVICES_PID left the services running"
