"""Commands on files: calibrate, evaluate, and the replay and demo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from racer_online import core
from racer_online.apps.cli.common import (
    Alpha,
    BoundOpt,
    CorrectAtOpt,
    DataOpt,
    Delta,
    JsonOpt,
    MissOpt,
    PerPhaseOpt,
    PricesOpt,
    RuleOpt,
    ScheduleOpt,
    app,
    fmt,
    method,
    note,
    out,
    progress_bar,
    read_outcomes,
    select_scope,
    show_replay,
)
from racer_online.errors import InvalidInputError
from racer_online.records import read_records
from racer_online.settings import Settings

DEFAULT_N_CALIBRATION = 1000  # evaluate's calibration records per split, on data this big


@app.command()
def calibrate(
    records: Annotated[Path, typer.Option(help="Records CSV (p:<model>, y:<model> columns).")],
    alpha: Alpha,
    delta: Delta,
    bound: BoundOpt = "binomial",
    rule: RuleOpt = "cumulative",
    miss: MissOpt = "answerable",
    scope: Annotated[str | None, typer.Option(help="Use only this scope's records.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Calibrate the RACER threshold on a records file."""
    data = select_scope(read_records(records), scope)
    graded = data.fully_graded()
    if len(graded) < len(data):
        note(f"note: left out {len(data) - len(graded)} records with an ungraded model")
    if not len(graded):
        raise InvalidInputError(f"{records}: no record has a label for every model")
    result = core.calibrate(
        graded.scores,
        graded.labels.astype(bool),
        alpha=alpha,
        delta=delta,
        **method(bound, rule, miss),
        p_abstain=graded.p_abstain,
        prices=graded.costs,
    )
    report = {
        "lam_hat": result.lam_hat,
        "m_star": result.m_star,
        "n": result.n,
        "certified": result.certified,
        "fallback": result.fallback,
        "empirical_risk": result.empirical_risk,
        "mean_set_size": result.mean_set_size,
        "abstain_rate": result.abstain_rate,
        "mean_cost": result.mean_cost,
        "alpha": alpha,
        "delta": delta,
        "bound": bound,
        "rule": rule,
        "miss": miss,
        "models": list(graded.models),
    }
    if as_json:
        print(json.dumps(report))
        return
    table = Table("quantity", "value", title="RACER calibration")
    for key, value in report.items():
        table.add_row(key, fmt(value))
    out.print(table)
    if result.fallback:
        note("note: nothing certified with this many records: lam = 1 (every option)")


@app.command()
def evaluate(
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    prices: PricesOpt = None,
    delta: Delta = 0.1,
    bound: BoundOpt = "binomial",
    rule: RuleOpt = "cumulative",
    miss: MissOpt = "answerable",
    n_calibration: Annotated[
        int | None,
        typer.Option(help="Calibration records per split (default: 1000, at most half the data)."),
    ] = None,
    splits: Annotated[int, typer.Option(help="Random calibration/test splits.")] = 100,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """RACER on an outcomes dataset, next to top-1 and all-models routing."""
    from racer_online.offline.evaluation import task_router_records

    outcomes = read_outcomes(data, correct_at, prices)
    records = task_router_records(outcomes, seed=seed)
    if n_calibration is None:
        n_calibration = min(DEFAULT_N_CALIBRATION, len(records) // 2)  # the rest tests
    if not 0 < n_calibration < len(records):
        raise InvalidInputError(f"--n-calibration must lie in [1, {len(records) - 1}]")
    choices = method(bound, rule, miss)
    rows = _evaluation_rows(records, delta, choices, n_calibration, splits, seed)
    if as_json:
        print(json.dumps({"data": outcomes.name, "priced": outcomes.priced, "delta": delta,
                          **choices, "n_calibration": n_calibration, "splits": splits,
                          "rows": rows}))  # fmt: skip
        return
    columns = ("alpha", "router", "lam_hat", "risk", "mean_set_size", "abstain_rate", "mean_price")
    table = Table(
        "alpha", "router", "lam_hat", "test risk", "mean set size", "abstain", "mean price",
        title=f"RACER on {outcomes.name}: {rule} / {miss}, {bound} bound, delta = {delta}, "
        f"{n_calibration} calibration records, mean of {splits} splits",
    )  # fmt: skip
    for row in rows:
        table.add_row(*(fmt(row[k]) for k in columns))
    out.print(table)
    if not outcomes.priced:
        note(
            f"note: {outcomes.name} gives no prices (price:<model> columns or --prices): "
            "mean price is 0"
        )


def _evaluation_rows(
    records: Any, delta: float, choices: dict[str, Any], n_calibration: int, splits: int, seed: int
) -> list[dict[str, Any]]:
    """Mean figures of RACER, top-1 and all-models routing over random splits, per alpha."""
    from racer_online.offline.evaluation import mean_figures, random_splits

    rows = []
    for alpha in (0.05, 0.1, 0.2):
        split = random_splits(records, alpha=alpha, delta=delta, **choices,
                              n_calibration=n_calibration, splits=splits, seed=seed)  # fmt: skip
        results = list(split)
        for name, figs in (
            ("racer", [r.racer for r in results]),
            ("top-1", [r.top1 for r in results]),
            ("all models", [r.all_models for r in results]),
        ):
            mean = mean_figures(figs)
            lam = float(np.mean([r.lam_hat for r in results])) if name == "racer" else None
            rows.append({"alpha": alpha, "router": name, "lam_hat": lam, **vars(mean)})
    return rows


@app.command()
def replay(
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    prices: Annotated[
        Path | None,
        typer.Option(
            help="Prices CSV (model, price columns) for the figures and the cheapest "
            "baseline (default: the scope's prices, which the worker routes at)."
        ),
    ] = None,
    router: Annotated[
        Path | None,
        typer.Option(
            help="The worker's router: the questions it trained on are not replayed "
            "(default: RACER_ROUTER_FILE)."
        ),
    ] = None,
    scope: Annotated[str, typer.Option(help="Scope the queries belong to.")] = "default",
    schedule: ScheduleOpt = None,
    per_phase: PerPhaseOpt = None,
    rate: Annotated[float, typer.Option(help="Queries per second.")] = 200.0,
    delay_mean: Annotated[float, typer.Option(help="Mean feedback delay, seconds.")] = 0.2,
    static_n: Annotated[int, typer.Option(help="Queries the static baseline calibrates on.")] = 500,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Stream a real outcomes dataset through the running system, through a drift schedule."""
    from racer_online.apps import replay as replaying

    settings = Settings.load()
    outcomes = read_outcomes(data, correct_at, prices)
    phases = replaying.parse_schedule(schedule) if schedule else None
    rows = replaying.held_out_rows(outcomes, router or settings.router_file)
    given = dict(zip(outcomes.models, outcomes.prices.tolist(), strict=True)) if prices else None
    the_plan = replaying.plan(outcomes, phases, rows=rows, per_phase=per_phase, seed=seed)
    with progress_bar(not as_json) as on_progress:
        result = asyncio.run(replaying.replay(
            settings, outcomes, the_plan, scope=scope, rate=rate, delay_mean_s=delay_mean,
            static_n=static_n, seed=seed, on_progress=on_progress, prices=given,
        ))  # fmt: skip
    show_replay(result, as_json)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Router, logs and report.")] = Path(
        "artifacts/demo"
    ),
    per_phase: Annotated[
        int | None, typer.Option(help="At most this many queries a phase.")
    ] = None,
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    prices: PricesOpt = None,
    as_json: JsonOpt = False,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="Your Kafka (with --redis); else the demo starts its own.")] = None,
    redis: Annotated[str | None, typer.Option(
        "--redis", help="Your Redis (with --broker); else the demo starts its own.")] = None,
) -> None:  # fmt: skip
    """The whole system on an outcomes dataset: services, router, worker, replay, report."""
    from racer_online.apps.demo import run_demo

    live = not as_json and out.console.is_terminal  # the live view only where it redraws
    result = run_demo(
        out_dir, live=live, per_phase=per_phase, data=data, correct_at=correct_at,
        prices=prices, broker=broker, redis=redis,
    )  # fmt: skip
    show_replay(result, as_json)
    if not as_json:
        note(f"report in {out_dir / 'report'}, worker log in {out_dir / 'worker-0.log'}")
