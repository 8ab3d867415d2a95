"""What the commands share: the Typer app, option types, output helpers."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
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
from racer_online.datasets import Outcomes, load_outcomes
from racer_online.errors import InvalidInputError
from racer_online.records import Records
from racer_online.service.identity import short

app = typer.Typer(
    help="Risk-controlled set-valued LLM routing on a stream (RACER, online).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def reflow_help(typer_app: typer.Typer) -> None:
    """Join the lines of every paragraph of each command's help (its docstring), so the help
    wraps at the terminal's width instead of breaking where the source line ended: Typer
    keeps the line breaks of every paragraph after the first."""
    for info in typer_app.registered_commands:
        text = info.help if info.help is not None else inspect.getdoc(info.callback)
        if text:
            info.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


class _Output:
    """Rich tables on a terminal; plain aligned text, never cut, into a pipe or file."""

    def __init__(self) -> None:
        self.console = Console()

    def print(self, renderable: object) -> None:
        if isinstance(renderable, Table) and not self.console.is_terminal:
            print(plain_table(renderable), flush=True)
        else:
            self.console.print(renderable)


def plain_table(table: Table) -> str:
    """The table as text: title, header and rows, columns padded to their widest cell."""
    columns = [[str(c.header), *(str(cell) for cell in c.cells)] for c in table.columns]
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = [str(table.title)] if table.title else []
    for row in zip(*columns, strict=True):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


out = _Output()

Alpha = Annotated[float, typer.Option(help="Target misroute probability, in (0, 1).")]
Delta = Annotated[float, typer.Option(help="Allowed failure probability, in (0, 1).")]
BoundOpt = Annotated[
    str, typer.Option("--bound", help="binomial, anytime, hoeffding, bentkus, hb or crc.")
]
RuleOpt = Annotated[str, typer.Option("--rule", help="cumulative, threshold or cost.")]
MissOpt = Annotated[str, typer.Option("--miss", help="answerable or augmented.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(help="Outcomes CSV (question, y:<model> columns) or its folder; "
                 "default: the shipped dataset."),
]  # fmt: skip
CorrectAtOpt = Annotated[
    float | None,
    typer.Option(help="Grade score labels: correct when y:<model> >= this (default: 0/1 only)."),
]
PricesOpt = Annotated[
    Path | None, typer.Option(help="Prices CSV (model, price columns) for the outcomes.")
]


def read_outcomes(data: Path | None, correct_at: float | None, prices: Path | None) -> Outcomes:
    """The outcomes the options name (default: the shipped dataset)."""
    return load_outcomes(data, correct_at=correct_at, prices_file=prices)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 query``, ``2 queries``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or (noun[:-1] + 'ies' if noun.endswith('y') else noun + 's')}"


ScheduleOpt = Annotated[
    str | None,
    typer.Option(help='Phases: "name=task,task;name=task" (default: from the data\'s tasks).'),
]
PerPhaseOpt = Annotated[int | None, typer.Option(help="At most this many queries a phase.")]


def note(message: str) -> None:
    """One plain line on stderr: never wrapped, so scripts can grep it."""
    print(message, file=sys.stderr)


def threshold_table(title: str, rows: list[dict[str, Any]]) -> Table:
    # "identity": the models and router the threshold was certified for (short fingerprint).
    table = Table("scope", "v", "status", "lam", "n", "risk", "realised", "set", "reason",
                  "identity", "at", title=title)  # fmt: skip
    for t in rows:
        at = time.strftime("%H:%M:%S", time.localtime(t["computed_at"])) if t["version"] else "-"
        table.add_row(t["scope"], str(t["version"]), t["status"], fmt(t["lam"]), str(t["n"]),
                      fmt(t["empirical_risk"]), fmt(t["realised_miss_rate"]),
                      fmt(t["mean_set_size"]), t["reason"], short(t.get("scope_id")),
                      at)  # fmt: skip
    return table


def parse_time(value: str | None) -> float:
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


def show_replay(result: dict[str, Any], as_json: bool) -> None:
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
    alpha = result["alpha"]
    for i, phase in enumerate(result["phases"]):
        for name, figures in rows:
            f = figures[i]
            over = name.startswith("racer") and f["realised_miss_rate"] > alpha
            table.add_row(
                phase["name"] if name.startswith("racer") else "",
                name,
                str(f["n"]),
                fmt(f["realised_miss_rate"]) + (" > alpha" if over else ""),
                fmt(f["mean_set_size"]),
                fmt(f["abstain_rate"]),
                fmt(f["mean_price"]),
                fmt(f["coverage"]),
            )
        table.add_section()
    out.print(table)
    print(REPLAY_COLUMNS)
    over = [p for p in result["phases"] if p["realised_miss_rate"] > alpha]
    if over:
        named = ", ".join(f"{p['name']} ({fmt(p['realised_miss_rate'])})" for p in over)
        print(
            f"over alpha = {alpha}: {named}. The guarantee is for traffic exchangeable with "
            "the window it was calibrated on; right after a shift the window still holds the "
            "old traffic, until the drift monitor's new segment takes over (docs/method.md)."
        )


# What each column of the replay's and the demo's table is, printed under it.
REPLAY_COLUMNS = (
    "miss rate: share of the phase's queries whose set misses though a model was right (exact, "
    "from the full labels); set size: models invoked per query; abstain: share of empty sets; "
    "price: mean price of a set; coverage: share of queries whose set holds a correct model."
)


@contextlib.contextmanager
def progress_bar(live: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while decisions come back, on a terminal only: in a pipe or
    a file it would run into the next line."""
    if not live or not Console(stderr=True).is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replaying", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def method(bound: str, rule: str, miss: str) -> dict[str, Any]:
    """The method's choices, checked here so a typo fails before any work."""
    check_choice("bound", bound, core.BOUNDS)
    check_choice("rule", rule, core.RULES)
    check_choice("miss definition", miss, core.MISSES)
    return {"bound": bound, "rule": rule, "miss": miss}


def select_scope(records: Records, scope: str | None) -> Records:
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


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
