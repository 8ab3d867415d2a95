"""The ``backtest`` command: the online system over an outcomes dataset, in simulated time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from racer_online.apps.cli.common import (
    BoundOpt,
    CorrectAtOpt,
    DataOpt,
    JsonOpt,
    PerPhaseOpt,
    PricesOpt,
    app,
    fmt,
    out,
    read_outcomes,
)

DEMO_DIR = Path("artifacts/demo")  # the demo's router, trained once and reused


@app.command()
def backtest(
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    prices: PricesOpt = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help='Phases: "name=task,task;name=task", or "stationary" (one shuffled '
            "phase of every query); default: from the data's tasks."
        ),
    ] = None,
    per_phase: PerPhaseOpt = None,
    router: Annotated[
        Path | None,
        typer.Option(
            help="A router from train-router (default: the demo's, trained on the data "
            "as the demo does when it was trained on other data)."
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Target misroute probability.")] = 0.1,
    delta: Annotated[float, typer.Option(help="Allowed failure probability.")] = 0.1,
    bound: BoundOpt = "anytime",
    warm_start: Annotated[
        Path | None,
        typer.Option(help="Fully graded records (the calibrate format) the window starts from."),
    ] = None,
    audit_rate: Annotated[
        float, typer.Option(help="Share of queries graded on every model.")
    ] = 0.1,
    feedback_lag: Annotated[
        int, typer.Option(help="Queries between a decision and its labels.")
    ] = 20,
    rate: Annotated[float, typer.Option(help="Simulated queries per second.")] = 10.0,
    seeds: Annotated[int, typer.Option(help="Streams, each its own shuffle and audit draw.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Replay a dataset through the worker's own code in simulated time; mean and worst seed."""
    from racer_online.apps import replay
    from racer_online.apps.demo import router_file
    from racer_online.core import BOUNDS
    from racer_online.core.scoring import check_choice
    from racer_online.errors import InvalidInputError
    from racer_online.offline import backtest as bt
    from racer_online.routers.files import load_router

    if seeds < 1 or feedback_lag < 0 or rate <= 0:
        raise InvalidInputError("--seeds must be >= 1, --feedback-lag >= 0 and --rate > 0")
    check_choice("bound", bound, BOUNDS)
    if warm_start is not None and not warm_start.is_file():
        raise InvalidInputError(f"--warm-start {warm_start}: no such file")
    outcomes = read_outcomes(data, correct_at, prices)
    path = router or router_file(DEMO_DIR, data=data, correct_at=correct_at)
    scope_options: dict[str, Any] = {"alpha": alpha, "delta": delta, "bound": bound}
    if warm_start is not None:
        scope_options["warm_start"] = str(warm_start.resolve())
    settings = bt.settings_for(
        outcomes.models, outcomes.prices.tolist(), audit_rate=audit_rate, scope=scope_options
    )
    scope = settings.scopes[bt.SCOPE]
    rows = replay.held_out_rows(outcomes, path)
    scored = bt.score_rows(outcomes, load_router(path), rows, scope.model_names)
    phases = bt.schedule_of(schedule)
    result = bt.backtest(settings, scored, phases, seeds=seeds, per_phase=per_phase,
                         pacing=bt.Pacing(feedback_lag=feedback_lag, rate=rate))  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        out.print(_table(result))


def _table(result: dict[str, Any]) -> Table:
    table = Table(
        "phase", "router", "miss (worst)", "set size", "abstain", "price", "extra gradings",
        "alarms", "to safe (worst)", "over alpha (seeds ever)",
        title=f"Backtest: alpha = {result['alpha']}, delta = {result['delta']}, audit "
        f"{result['audit_rate']}, lag {result['feedback_lag']}, {result['seeds']} seeds; "
        f"set size over the first 1,000: {result['first_1000_mean_set_size']:.2f}",
    )  # fmt: skip
    rows = [("racer (online)", result["phases"]), *result["baselines"].items()]
    for i, phase in enumerate(result["phases"]):
        for name, figures in rows:
            f = figures[i]
            table.add_row(
                phase["name"] if name.startswith("racer") else "", name,
                f"{fmt(f['realised_miss_rate'])} ({fmt(f['worst_realised_miss_rate'])})",
                fmt(f["mean_set_size"]), fmt(f["abstain_rate"]), fmt(f["mean_price"]),
                fmt(f.get("extra_gradings_per_query")), fmt(f.get("alarms")),
                f"{fmt(f['queries_to_safe'])} ({fmt(f['worst_queries_to_safe'])})"
                if "queries_to_safe" in f else "-",
                f"{fmt(f['over_alpha_share'])} ({fmt(f['ever_over_alpha'])})"
                if "over_alpha_share" in f else "-",
            )  # fmt: skip
        table.add_section()
    return table
