"""What the commands share: the Typer app, option types, output helpers."""

from __future__ import annotations

import contextlib
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
from racer_online.errors import InvalidInputError
from racer_online.offline.datasets import Outcomes, load_outcomes
from racer_online.offline.records import Records

app = typer.Typer(
    help="Risk-controlled set-valued LLM routing on a stream (RACER, online).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    table = Table("scope", "v", "status", "lam", "n", "risk", "realised", "set", "reason", "at",
                  title=title)  # fmt: skip
    for t in rows:
        at = time.strftime("%H:%M:%S", time.localtime(t["computed_at"])) if t["version"] else "-"
        table.add_row(t["scope"], str(t["version"]), t["status"], fmt(t["lam"]), str(t["n"]),
                      fmt(t["empirical_risk"]), fmt(t["realised_miss_rate"]),
                      fmt(t["mean_set_size"]), t["reason"], at)  # fmt: skip
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
    for i, phase in enumerate(result["phases"]):
        for name, figures in rows:
            f = figures[i]
            table.add_row(
                phase["name"] if name.startswith("racer") else "",
                name,
                str(f["n"]),
                fmt(f["realised_miss_rate"]),
                fmt(f["mean_set_size"]),
                fmt(f["abstain_rate"]),
                fmt(f["mean_price"]),
                fmt(f["coverage"]),
            )
        table.add_section()
    out.print(table)


@contextlib.contextmanager
def progress_bar(live: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while decisions come back."""
    if not live:
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
