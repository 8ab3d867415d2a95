"""Commands that read the stored thresholds: thresholds, monitor, report."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from racer_online.apps.cli.common import (
    JsonOpt,
    app,
    note,
    out,
    parse_time,
    threshold_table,
)
from racer_online.errors import InvalidInputError
from racer_online.settings import Settings


@app.command()
def thresholds(
    scope: Annotated[str | None, typer.Option(help="Only this scope.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Every recalibration.")] = False,
    since: Annotated[
        str | None, typer.Option(help="With --history: unix seconds or ISO time.")
    ] = None,
    wait: Annotated[
        float,
        typer.Option(help="Wait up to this many seconds for a certified threshold of each scope."),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """The current threshold of each scope (or its history), as stored in Redis."""
    from racer_online.apps.reading import load_current_thresholds, load_history

    settings = Settings.load()
    names = [scope] if scope else list(settings.scopes)
    if scope is not None and scope not in settings.scopes:
        raise InvalidInputError(f"unknown scope {scope!r}")
    if history:
        found = asyncio.run(load_history(settings, names, since=parse_time(since)))
        rows = {name: [t.model_dump() for t in h["thresholds"]] for name, h in found.items()}
        if as_json:
            print(json.dumps(rows))
            return
        for name, points in rows.items():
            out.print(threshold_table(f"{name}: threshold history", points))
        return
    current = asyncio.run(load_current_thresholds(settings, names))
    deadline = time.monotonic() + wait
    while not all(t.certified for t in current.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        current = asyncio.run(load_current_thresholds(settings, names))
    if wait and not all(t.certified for t in current.values()):
        note(f"note: not every scope certified within {wait:g} s")
    if as_json:
        print(json.dumps({name: t.model_dump() for name, t in current.items()}))
        return
    out.print(threshold_table("RACER thresholds", [t.model_dump() for t in current.values()]))


@app.command()
def monitor(
    scope: Annotated[str | None, typer.Option(help="Only this scope.")] = None,
    refresh: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of each scope's threshold drift, read from Redis (q or Ctrl-C quits).

    Off a terminal (a pipe, a file) it prints the view once as plain text, then one line
    per new threshold or alert.
    """
    from racer_online.apps.monitor import run_monitor

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
    from racer_online.apps.report import write_report

    written = write_report(Settings.load(), out_dir, scopes=scope, since=parse_time(since))
    note(f"wrote {len(written)} files to {out_dir}: {', '.join(p.name for p in written)}")
