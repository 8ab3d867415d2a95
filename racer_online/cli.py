"""The ``racer-online`` command. Errors are one readable line and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from racer_online import core
from racer_online.core.scoring import check_choice
from racer_online.errors import InvalidInputError, RacerError
from racer_online.records import Records, read_records
from racer_online.settings import Settings

app = typer.Typer(
    help="Risk-controlled set-valued LLM routing on a stream (RACER, online).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()


def note(message: str) -> None:
    """One plain line on stderr: never wrapped, so scripts can grep it."""
    print(message, file=sys.stderr)


Alpha = Annotated[float, typer.Option(help="Target misroute probability, in (0, 1).")]
Delta = Annotated[float, typer.Option(help="Allowed failure probability, in (0, 1).")]
BoundOpt = Annotated[str, typer.Option("--bound", help="binomial, hoeffding, bentkus, hb or crc.")]
RuleOpt = Annotated[str, typer.Option("--rule", help="cumulative, threshold or cost.")]
MissOpt = Annotated[str, typer.Option("--miss", help="answerable or augmented.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


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
    data = _select_scope(read_records(records), scope)
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
        **_method(bound, rule, miss),
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
        table.add_row(key, _fmt(value))
    out.print(table)
    if result.fallback:
        note("note: nothing certified with this many records: lam = 1 (every option)")


@app.command()
def evaluate(
    data: Annotated[Path | None, typer.Option(help="Outcomes dataset folder or CSV.")] = None,
    delta: Delta = 0.1,
    bound: BoundOpt = "binomial",
    rule: RuleOpt = "cumulative",
    miss: MissOpt = "answerable",
    n_calibration: Annotated[int, typer.Option(help="Calibration records per split.")] = 1000,
    splits: Annotated[int, typer.Option(help="Random calibration/test splits.")] = 100,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """RACER on the shipped real outcomes, next to top-1 and all-models routing."""
    from racer_online.datasets import load_outcomes
    from racer_online.evaluation import mean_figures, random_splits, task_router_records

    records = task_router_records(load_outcomes(data), seed=seed)
    if not 0 < n_calibration < len(records):
        raise InvalidInputError(f"--n-calibration must lie in [1, {len(records) - 1}]")
    rows = []
    for alpha in (0.05, 0.1, 0.2):
        results = list(
            random_splits(
                records,
                alpha=alpha,
                delta=delta,
                **_method(bound, rule, miss),
                n_calibration=n_calibration,
                splits=splits,
                seed=seed,
            )
        )
        for name, figs in (
            ("racer", [r.racer for r in results]),
            ("top-1", [r.top1 for r in results]),
            ("all models", [r.all_models for r in results]),
        ):
            mean = mean_figures(figs)
            lam = float(np.mean([r.lam_hat for r in results])) if name == "racer" else None
            rows.append({"alpha": alpha, "router": name, "lam_hat": lam, **vars(mean)})
    if as_json:
        print(
            json.dumps(
                {
                    "delta": delta,
                    "bound": bound,
                    "rule": rule,
                    "miss": miss,
                    "n_calibration": n_calibration,
                    "splits": splits,
                    "rows": rows,
                }
            )
        )
        return
    table = Table(
        "alpha",
        "router",
        "lam_hat",
        "test risk",
        "mean set size",
        "abstain",
        "mean price",
        title=f"RACER on llmrouter-9llm: {rule} / {miss}, {bound} bound, delta = {delta}, "
        f"{n_calibration} calibration records, mean of {splits} splits",
    )
    for row in rows:
        table.add_row(
            *(
                _fmt(row[k])
                for k in (
                    "alpha",
                    "router",
                    "lam_hat",
                    "risk",
                    "mean_set_size",
                    "abstain_rate",
                    "mean_price",
                )
            )
        )
    out.print(table)


@app.command()
def worker() -> None:
    """Run the stream worker with the RACER_* settings (Ctrl-C stops it cleanly)."""
    import faust

    from worker.app import create_app

    settings = Settings.load()
    settings.scopes  # noqa: B018  # a bad scopes file fails here, as one line
    # redirect_stdouts=False: print() stays print(), not a WARNING log line.
    worker_process = faust.Worker(
        create_app(settings), loglevel=settings.log_level.lower(), redirect_stdouts=False
    )
    worker_process.execute_from_commandline()


@app.command()
def publish(
    source: Annotated[str, typer.Argument(help="Queries as JSONL, a records CSV, or - (stdin).")],
) -> None:
    """Publish queries to the queries topic."""
    from racer_online.publishing import produce, read_queries

    settings = Settings.load()
    sent = asyncio.run(produce(settings, settings.topics.queries, read_queries(source)))
    note(f"published {sent} queries to {settings.topics.queries}")


@app.command()
def feedback(
    source: Annotated[str, typer.Argument(help="Labels as JSONL, a records CSV, or - (stdin).")],
) -> None:
    """Publish correctness feedback to the feedback topic."""
    from racer_online.publishing import produce, read_feedback

    settings = Settings.load()
    sent = asyncio.run(produce(settings, settings.topics.feedback, read_feedback(source)))
    note(f"published {sent} feedback events to {settings.topics.feedback}")


@app.command()
def thresholds(
    scope: Annotated[str | None, typer.Option(help="Only this scope.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Every recalibration.")] = False,
    since: Annotated[
        str | None, typer.Option(help="With --history: unix seconds or ISO time.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The current threshold of each scope (or its history), as stored in Redis."""
    from racer_online.service import load_current_thresholds, load_history

    settings = Settings.load()
    names = [scope] if scope else list(settings.scopes)
    if scope is not None and scope not in settings.scopes:
        raise InvalidInputError(f"unknown scope {scope!r}")
    if history:
        found = asyncio.run(load_history(settings, names, since=_parse_time(since)))
        rows = {name: [t.model_dump() for t in h["thresholds"]] for name, h in found.items()}
        if as_json:
            print(json.dumps(rows))
            return
        for name, points in rows.items():
            out.print(_threshold_table(f"{name}: threshold history", points))
        return
    current = asyncio.run(load_current_thresholds(settings, names))
    if as_json:
        print(json.dumps({name: t.model_dump() for name, t in current.items()}))
        return
    out.print(_threshold_table("RACER thresholds", [t.model_dump() for t in current.values()]))


def _threshold_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table("scope", "v", "status", "lam", "n", "risk", "realised", "set", "reason", "at",
                  title=title)  # fmt: skip
    for t in rows:
        at = time.strftime("%H:%M:%S", time.localtime(t["computed_at"])) if t["version"] else "-"
        table.add_row(t["scope"], str(t["version"]), t["status"], _fmt(t["lam"]), str(t["n"]),
                      _fmt(t["empirical_risk"]), _fmt(t["realised_miss_rate"]),
                      _fmt(t["mean_set_size"]), t["reason"], at)  # fmt: skip
    return table


def _parse_time(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidInputError(
            f"--since {value!r} is neither unix seconds nor an ISO time"
        ) from None


@app.command()
def monitor(
    scope: Annotated[str | None, typer.Option(help="Only this scope.")] = None,
    refresh: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of each scope's threshold drift, read from Redis (Ctrl-C quits)."""
    from racer_online.monitor import run_monitor

    run_monitor(Settings.load(), scope=scope, refresh_s=refresh, once=once)


@app.command()
def report(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for report.html and one PNG per scope.")
    ],
    scope: Annotated[list[str] | None, typer.Option(help="Only this scope (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(help="Unix seconds or ISO time.")] = None,
) -> None:
    """The drift charts as a self-contained HTML page and PNG images."""
    from racer_online.report import write_report

    written = write_report(Settings.load(), out_dir, scopes=scope, since=_parse_time(since))
    note(f"wrote {len(written)} files to {out_dir}: {', '.join(p.name for p in written)}")


@app.command("dev-services")
def dev_services() -> None:
    """Start a local broker and Redis; print RACER_* lines to source; run until stopped."""
    from racer_online.embedded import embedded_services

    with (
        contextlib.suppress(KeyboardInterrupt),  # Ctrl-C is how they stop: exit 0
        embedded_services(os.environ.get("RACER_REDIS_URL")) as services,
    ):
        for name, value in services.env().items():
            print(f"{name}={value}", flush=True)
        note("dev services are up; Ctrl-C stops them")
        threading.Event().wait()


@app.command("train-router")
def train_router(
    save_to: Annotated[
        Path, typer.Option("--out", help="Where to save: writes OUT.json and OUT.npz.")
    ],
    data: Annotated[Path | None, typer.Option(help="Outcomes CSV or its folder.")] = None,
    kind: Annotated[str, typer.Option(help="text (TF-IDF) or knn (embeddings).")] = "text",
    seed: int = 0,
    train_fraction: Annotated[float, typer.Option(help="Share of questions to train on.")] = 0.4,
    as_json: JsonOpt = False,
) -> None:
    """Train a base router; report per-model AUC and calibration error on held-out rows."""
    from racer_online.routers.report import train_router_command

    report = train_router_command(data, save_to, kind, seed, train_fraction)
    print(json.dumps(report.to_dict()) if as_json else report.render())


@app.command()
def replay(
    data: Annotated[Path | None, typer.Option(help="Outcomes dataset folder or CSV.")] = None,
    scope: Annotated[str, typer.Option(help="Scope the queries belong to.")] = "default",
    schedule: Annotated[
        str | None, typer.Option(help='Phases: "name=task,task;name=task" (default: 3 phases).')
    ] = None,
    per_phase: Annotated[
        int | None, typer.Option(help="At most this many queries a phase.")
    ] = None,
    rate: Annotated[float, typer.Option(help="Queries per second.")] = 200.0,
    delay_mean: Annotated[float, typer.Option(help="Mean feedback delay, seconds.")] = 0.2,
    static_n: Annotated[int, typer.Option(help="Queries the static baseline calibrates on.")] = 500,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Stream a real outcomes dataset through the running system, through a drift schedule."""
    from racer_online import replay as replaying
    from racer_online.datasets import load_outcomes

    settings = Settings.load()
    outcomes = load_outcomes(data)
    phases = replaying.parse_schedule(schedule) if schedule else replaying.DEFAULT_SCHEDULE
    rows = replaying.held_out_rows(outcomes, settings.router_file)
    the_plan = replaying.plan(outcomes, phases, rows=rows, per_phase=per_phase, seed=seed)
    with _progress(not as_json) as progress:
        result = asyncio.run(replaying.replay(
            settings, outcomes, the_plan, scope=scope, rate=rate, delay_mean_s=delay_mean,
            static_n=static_n, seed=seed, on_progress=progress,
        ))  # fmt: skip
    _show_replay(result, as_json)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Router, logs and report.")] = Path(
        "artifacts/demo"
    ),
    per_phase: Annotated[
        int | None, typer.Option(help="At most this many queries a phase.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole system on the shipped data: services, router, worker, replay, report."""
    from racer_online.demo import run_demo

    result = run_demo(out_dir, live=not as_json, per_phase=per_phase)
    _show_replay(result, as_json)
    if not as_json:
        note(f"report in {out_dir / 'report'}, worker log in {out_dir / 'worker.log'}")


def _show_replay(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        "phase",
        "router",
        "n",
        "miss rate",
        "set size",
        "abstain",
        "price",
        "coverage",
        title=f"Replay: alpha = {result['alpha']}, delta = {result['delta']}",
    )
    rows = [("racer (online)", result["phases"]), *result["baselines"].items()]
    for i, phase in enumerate(result["phases"]):
        for name, figures in rows:
            f = figures[i]
            table.add_row(
                phase["name"] if name.startswith("racer") else "",
                name,
                str(f["n"]),
                _fmt(f["realised_miss_rate"]),
                _fmt(f["mean_set_size"]),
                _fmt(f["abstain_rate"]),
                _fmt(f["mean_price"]),
                _fmt(f["coverage"]),
            )
        table.add_section()
    out.print(table)


@contextlib.contextmanager
def _progress(live: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while decisions come back."""
    if not live:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replaying", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _method(bound: str, rule: str, miss: str) -> dict[str, Any]:
    """The method's choices, checked here so a typo fails before any work."""
    check_choice("bound", bound, core.BOUNDS)
    check_choice("rule", rule, core.RULES)
    check_choice("miss definition", miss, core.MISSES)
    return {"bound": bound, "rule": rule, "miss": miss}


def _select_scope(records: Records, scope: str | None) -> Records:
    present = sorted(set(records.scopes or ()))
    if scope is None:
        if len(present) > 1:
            raise InvalidInputError(
                f"the records hold scopes {', '.join(present)}: pick one with --scope"
            )
        return records
    if scope not in present:
        raise InvalidInputError(
            f"no records of scope {scope!r} (present: {', '.join(present) or 'none'})"
        )
    assert records.scopes is not None
    return records.take(np.flatnonzero(np.array(records.scopes) == scope))


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # commands return None; an abort (Ctrl-C) 130
        if isinstance(code, int) and code:
            note("racer-online: aborted")
            sys.exit(code)
    except typer.Abort:
        note("racer-online: aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors, from typer's own click
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message.strip():  # empty when typer already printed the help
            note(f"racer-online: error: {' '.join(message.split())}")
        sys.exit(getattr(exc, "exit_code", 2))
    except RacerError as exc:
        note(f"racer-online: error: {exc}")
        sys.exit(1)
