"""The terminal monitor: frames from a synthetic history, and ``--once`` on a real Redis."""

import asyncio
import io
import os
import pty
import select
import subprocess
import sys
import threading

import pytest
from rich.console import Console

from racer_online.apps.monitor import alert_marks, build_frame, run_monitor, sparkline
from racer_online.errors import InvalidInputError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.service import store_config
from racer_online.settings import Settings
from racer_online.store import RedisStore
from racer_online.testing import until

T0 = 1_800_000_000.0
DRIFT_MESSAGE = "31 misses in the last 50 audited decisions against alpha = 0.1: window restarted"


def threshold(scope, version, lam, *, status="certified", reason="records", rate=0.07):
    return ThresholdMessage(
        scope=scope, version=version, lam=lam, status=status, certified=status == "certified",
        n=300, alpha=0.1, delta=0.05, bound="binomial", rule="cumulative", miss="answerable",
        m_star=17, empirical_risk=0.055, mean_set_size=1.84, abstain_rate=0.025, mean_price=0.3,
        reason=reason, realised_n=200, realised_miss_rate=rate, realised_low=0.0431,
        realised_high=0.1189, computed_at=T0 + 10 * version,
    )  # fmt: skip


def history(scope="default"):
    lams = [0.30, 0.31, 0.32, 0.31, 1.0, 0.7, 0.72]
    thresholds = [threshold(scope, v, lam) for v, lam in enumerate(lams, start=1)]
    thresholds[4] = threshold(scope, 5, 1.0, status="fallback", reason="drift", rate=0.31)
    alert = AlertMessage(scope=scope, kind="drift", at=T0 + 50, message=DRIFT_MESSAGE)
    return {"thresholds": thresholds, "alerts": [alert]}


def text_of(frame, width=200):
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(frame)
    return console.file.getvalue()


def test_frame_shows_threshold_risk_interval_and_alerts():
    shown = text_of(build_frame({"default": history()}, now=T0 + 95))
    assert "default" in shown and "certified" in shown and "v7" in shown
    assert "0.7200" in shown  # current lam
    assert "0.300 … 1.000 over the last 7" in shown
    assert "α           0.1   δ 0.05" in shown
    assert "7.0%   95% [4.3%, 11.9%]   n 200" in shown
    assert "1.84" in shown and "2.5%" in shown and "n 300   m* 17" in shown
    assert "25 s ago   (records)" in shown
    assert "drift" in shown and DRIFT_MESSAGE in shown


def test_alert_is_marked_under_the_recalibration_it_caused():
    data = history()
    line = sparkline([t.lam for t in data["thresholds"]])
    marks = alert_marks(data["thresholds"], data["alerts"])
    assert line[4] == "█" and marks == "    ▲"


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], ""), ([0.5, 0.5], "▄▄"), ([0.0, 1.0], "▁█"), ([0.0, None, 1.0], "▁ █"),
     ([0.0, 0.5, 1.0], "▁▅█")],
)  # fmt: skip
def test_sparkline(values, expected):
    assert sparkline(values) == expected


def test_sparkline_keeps_the_most_recent_values():
    assert sparkline([1.0] * 10 + [0.0, 1.0], width=2) == "▁█"


def test_empty_scope_and_unreachable_redis_are_said():
    empty = {"thresholds": [], "alerts": []}
    shown = text_of(build_frame({"fresh": empty}, now=T0, error="redis unreachable: refused"))
    assert "fresh" in shown and "no threshold recorded yet" in shown
    assert "not updating: redis unreachable: refused" in shown


def scopes_file(tmp_path, scope):
    path = tmp_path / "scopes.toml"
    path.write_text(
        f"[scopes.{scope}]\nalpha = 0.1\ndelta = 0.05\n[scopes.{scope}.models]\n"
        "m0 = { price = 0.1 }\nm1 = { price = 0.2 }\n"
    )
    return path


async def store_history(settings, scope, data):
    store = RedisStore.from_url(settings.redis_url, store_config(settings))
    try:
        lease = await store.hold_lease(scope, "leader", ttl_s=60, last_epoch=None)
        for t in data["thresholds"]:
            assert await store.save_threshold(scope, t.version, t.to_bytes(), epoch=lease.epoch)
        for a in data["alerts"]:
            await store.save_alert(scope, a.to_bytes(), epoch=lease.epoch)
    finally:
        await store.close()


def test_once_prints_one_frame_from_redis(tmp_path, redis_url, redis_ns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    settings = Settings(
        _env_file=None, redis_url=redis_url, scopes_file=scopes_file(tmp_path, redis_ns)
    )
    asyncio.run(store_history(settings, redis_ns, history(redis_ns)))
    run_monitor(settings, once=True)
    shown = capsys.readouterr().out
    assert redis_ns in shown and "v7" in shown and "0.7200" in shown
    assert "95% [4.3%, 11.9%]" in shown and DRIFT_MESSAGE[:40] in shown
    assert "▲" in shown


def test_once_on_a_scope_with_no_history(tmp_path, redis_url, redis_ns, capsys):
    settings = Settings(
        _env_file=None, redis_url=redis_url, scopes_file=scopes_file(tmp_path, redis_ns)
    )
    run_monitor(settings, scope=redis_ns, once=True)
    assert "no threshold recorded yet" in capsys.readouterr().out


def test_bad_arguments_are_one_line(tmp_path):
    settings = Settings(_env_file=None, scopes_file=scopes_file(tmp_path, "default"))
    with pytest.raises(InvalidInputError, match="unknown scope 'nope'"):
        run_monitor(settings, scope="nope", once=True)
    with pytest.raises(InvalidInputError, match="--refresh must be > 0"):
        run_monitor(settings, refresh_s=0)


def monitor_process(settings, scope, **popen):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACER_")}
    env |= {"RACER_REDIS_URL": settings.redis_url, "RACER_SCOPES_FILE": str(settings.scopes_file)}
    command = [
        sys.executable,
        "-m",
        "racer_online",
        "monitor",
        "--scope",
        scope,
        "--refresh",
        "0.2",
    ]
    return subprocess.Popen(command, env=env, **popen)


class Lines:
    """What a process writes, line by line, read in a thread so the test can wait on it."""

    def __init__(self, stream):
        self.lines = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))

    def having(self, text):
        return [line for line in self.lines if text in line]


async def test_off_a_terminal_it_prints_the_view_then_one_line_per_update(
    tmp_path, redis_url, redis_ns
):
    """``monitor | cat`` shows the frame at once (not when killed), then each update."""
    settings = Settings(
        _env_file=None, redis_url=redis_url, scopes_file=scopes_file(tmp_path, redis_ns)
    )
    data = history(redis_ns)
    first = {"thresholds": data["thresholds"][:6], "alerts": data["alerts"]}
    await store_history(settings, redis_ns, first)
    proc = monitor_process(settings, redis_ns, stdout=subprocess.PIPE, text=True)
    try:
        out = Lines(proc.stdout)
        await until(lambda: out.having("v6"), timeout=60, what="the snapshot through a pipe")
        assert not [line for line in out.lines if "\x1b[" in line]  # plain text, no redraws
        await store_history(
            settings, redis_ns, {"thresholds": data["thresholds"][6:], "alerts": []}
        )
        [line] = await until(lambda: out.having("v7 certified"), timeout=60, what="the update")
        assert line.endswith(
            f"  {redis_ns}  v7 certified  lam 0.7200  n 300  realised 7.0%  (records)"
        )
    finally:
        proc.terminate()
        proc.wait(30)


async def test_q_quits_on_a_terminal(tmp_path, redis_url, redis_ns):
    settings = Settings(
        _env_file=None, redis_url=redis_url, scopes_file=scopes_file(tmp_path, redis_ns)
    )
    await store_history(settings, redis_ns, history(redis_ns))
    main, child = pty.openpty()
    proc = monitor_process(settings, redis_ns, stdin=child, stdout=child, stderr=child)
    os.close(child)
    try:
        shown = bytearray()

        def drawn() -> bool:
            while select.select([main], [], [], 0)[0]:
                shown.extend(os.read(main, 65536))
            return b"v7" in shown

        await until(drawn, timeout=60, what="the first frame on the terminal")
        os.write(main, b"q")
        await until(lambda: proc.poll() is not None, timeout=30, what="the monitor to quit on q")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        os.close(main)
