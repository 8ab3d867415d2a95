"""`racer-online demo`: Ctrl-C in the middle stops everything it started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from racer_online.testing import ProcessStat

pytestmark = pytest.mark.e2e


def ctrl_c_as_in_a_terminal() -> None:
    """Children of a background shell start with SIGINT ignored; a terminal's do not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = ProcessStat.read(int(entry.name))
            if stat is not None:
                children.setdefault(stat.ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "racer_online", "demo", "--json", "--out", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    started: set[int] = set()
    while time.monotonic() < deadline:  # broker, Redis and the worker are all up
        started = descendants(demo.pid)
        log = tmp_path / "worker-0.log"
        if len(started) >= 3 and log.exists() and b"assigned partitions" in log.read_bytes():
            break
        assert demo.poll() is None, demo.stderr.read()
        time.sleep(0.5)
    else:
        pytest.fail("the demo's services never came up")
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode != 0
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while any(ProcessStat.alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in started if ProcessStat.alive(pid)], "processes left behind"
