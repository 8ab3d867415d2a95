"""The demo: the whole system on the shipped data, on services of its own (or those given).

Starts its own broker and Redis unless given ``--broker`` and ``--redis`` (never the exported
``RACER_KAFKA_BROKER`` and ``RACER_REDIS_URL``), trains the text router (or reuses it), runs
one worker, replays the data through a drift schedule while the live monitor shows the
threshold move, then prints the per-phase table and writes the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from racer_online.apps import replay
from racer_online.datasets import Outcomes
from racer_online.errors import ConfigError, RacerError
from racer_online.local.services import embedded_services
from racer_online.settings import Settings
from racer_online.testing import FAST_GROUP_ENV, LocalDeployment

# The demo runs at the production defaults (audit rate 0.1, the drift monitor on). Only the
# embedded broker's group timers are short, as in the tests (docs/architecture.md), so that
# the worker joins its group in seconds.
DEMO_ENV = dict(FAST_GROUP_ENV)
EXPORTED = ("RACER_KAFKA_BROKER", "RACER_REDIS_URL")  # what the demo ignores unless given


@contextlib.contextmanager
def services(broker: str | None = None, redis: str | None = None) -> Iterator[dict[str, str]]:
    """The services given (``--broker`` and ``--redis``, both), else a broker and a Redis of
    the demo's own: an exported RACER_KAFKA_BROKER / RACER_REDIS_URL is never used, since
    the demo reads its topics from the start and writes scope ``default`` (a user's staging
    cluster would lose both)."""
    if broker is not None and redis is not None:
        yield {"RACER_KAFKA_BROKER": broker, "RACER_REDIS_URL": redis}
        return
    exported = [name for name in EXPORTED if os.environ.get(name)]
    if exported:
        print(f"racer-online: ignoring the exported {' and '.join(exported)}: the demo runs on "
             "a broker and a Redis of its own (--broker URL --redis URL to use yours)",
              file=sys.stderr)  # fmt: skip
    with embedded_services(from_environment=False) as started:
        yield started.env()


@contextlib.contextmanager
def worker(env: dict[str, str], out_dir: Path) -> Iterator[LocalDeployment]:
    """One worker process on the services in ``env``; yields once it answers, stops it on
    exit."""
    deployment = LocalDeployment(
        broker_url=env["RACER_KAFKA_BROKER"], bootstrap="", redis_url=env["RACER_REDIS_URL"],
        directory=out_dir, scope=None, embedded_broker=False, env=env,
    )  # fmt: skip
    faust_data = out_dir / f"{env['RACER_APP_ID']}-data"  # Faust's folder, of this run only
    try:
        deployment.start_worker()
        try:
            asyncio.run(deployment.wait_answering(0, timeout=60))
        except AssertionError as exc:
            raise RacerError(f"{exc}; see {deployment.log_path(0)}") from None
        yield deployment
    finally:
        deployment.stop(grace=20)
        shutil.rmtree(faust_data, ignore_errors=True)


def router_file(
    out_dir: Path, *, data: Path | None = None, correct_at: float | None = None,
    seed: int = 0, train_fraction: float = 0.4,
) -> Path:  # fmt: skip
    """The demo's text router: trained once on a seeded 40% of the data, then reused while
    the data is the same."""
    from racer_online.apps.cli.training import train_router_command

    path = out_dir / "router.json"
    from racer_online.datasets import default_dataset_dir

    if path.exists():
        trained_on = (json.loads(path.read_text()).get("training") or {}).get("data")
        if trained_on == str(data or default_dataset_dir()):
            return path
    train_router_command(data, out_dir / "router", "text", seed, train_fraction,
                         correct_at=correct_at)  # fmt: skip
    return path


def run_demo(
    out_dir: Path, *, live: bool, per_phase: int | None = None, rate: float = 30.0,
    data: Path | None = None, correct_at: float | None = None, prices: Path | None = None,
    broker: str | None = None, redis: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything end to end; returns the replay's JSON object and writes the report.

    With ``data``, the scope routes over its models at its prices (a scopes file in
    ``out_dir``) and the schedule is derived from its tasks."""
    from racer_online.apps.report import write_report
    from racer_online.datasets import load_outcomes, scopes_toml

    if (broker is None) != (redis is None):
        raise ConfigError("give both --broker and --redis (your services), or neither")
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = load_outcomes(data, correct_at=correct_at, prices_file=prices)
    router = router_file(out_dir, data=data, correct_at=correct_at)
    scoped: dict[str, str] = {}
    if data is not None:
        scopes = out_dir / "scopes.toml"
        scopes.write_text(scopes_toml(outcomes))
        scoped = {"RACER_SCOPES_FILE": str(scopes.resolve())}
    with services(broker, redis) as addresses:
        # The worker runs in out_dir: every path it is given is absolute.
        env = addresses | DEMO_ENV | scoped | {
            "RACER_ROUTER_FILE": str(router.resolve()),
            "RACER_APP_ID": f"racer-demo-{os.getpid()}",
        }  # fmt: skip
        settings = Settings.load(
            kafka_broker=env["RACER_KAFKA_BROKER"], redis_url=env["RACER_REDIS_URL"],
            **({"scopes_file": Path(scoped["RACER_SCOPES_FILE"])} if scoped else {}),
        )  # fmt: skip
        the_plan = replay.plan(
            outcomes, rows=replay.held_out_rows(outcomes, router), per_phase=per_phase
        )
        started = time.time()
        with worker(env, out_dir), _ctrl_c_cancels_tasks():
            result = asyncio.run(_replay(settings, outcomes, the_plan, rate=rate, live=live))
        write_report(settings, out_dir / "report", since=started, phases=result["phase_starts"])
    return result


@contextlib.contextmanager
def _ctrl_c_cancels_tasks() -> Iterator[None]:
    """asyncio turns Ctrl-C into a cancellation, so that clients close cleanly, only under
    Python's own SIGINT handler; the embedded services install theirs."""
    previous = signal.getsignal(signal.SIGINT)
    if previous != signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def _replay(
    settings: Settings, outcomes: Outcomes, the_plan: replay.Plan, *, rate: float, live: bool
) -> dict[str, Any]:
    """The replay; with ``live``, the monitor's view of every scope above a progress bar."""
    if not live:
        return await replay.replay(settings, outcomes, the_plan, rate=rate)
    from rich.console import Group
    from rich.live import Live
    from rich.progress import Progress

    from racer_online.apps.monitor import build_frame
    from racer_online.apps.reading import reading_service

    progress = Progress()
    task = progress.add_task("replaying", total=len(the_plan.rows))
    async with reading_service(settings) as reader:
        with Live(progress, refresh_per_second=4) as view:

            async def watch() -> None:
                while True:
                    histories = {name: await reader.history(name) for name in reader.scopes}
                    view.update(Group(build_frame(histories, time.time()), progress))
                    await asyncio.sleep(1.0)

            watching = asyncio.create_task(watch())
            try:
                return await replay.replay(
                    settings, outcomes, the_plan, rate=rate,
                    on_progress=lambda done, _: progress.update(task, completed=done),
                )  # fmt: skip
            finally:
                watching.cancel()
