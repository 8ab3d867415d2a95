"""``racer-online offsets``: the workers' consumer groups on the input topics: where they
stand (``show``) and where they start (``reset``, by hand)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Literal

import typer

from racer_online.apps.cli.common import JsonOpt, app, note, out
from racer_online.settings import Settings

offsets_app = typer.Typer(
    help="The workers' committed offsets on the queries and feedback topics.",
    no_args_is_help=True,
)
app.add_typer(offsets_app, name="offsets")


@offsets_app.command()
def show(as_json: JsonOpt = False) -> None:
    """Per group and partition of the queries and feedback topics: the committed offset,
    the end offset and the lag between them, as the broker holds them."""
    from dataclasses import asdict

    from rich.table import Table

    from racer_online.kafka.offsets import show as read_offsets

    settings = Settings.load()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures come back as one line
    rows = asyncio.run(read_offsets(settings))
    if as_json:
        print(json.dumps([asdict(r) for r in rows]))
        return
    table = Table("group", "topic", "partition", "committed", "end", "lag",
                  title="The workers' consumer groups")  # fmt: skip
    for r in rows:
        committed = "none" if r.committed is None else str(r.committed)
        table.add_row(r.group, r.topic, str(r.partition), committed, str(r.end), str(r.lag))
    out.print(table)
    if not rows:
        note("no input topic exists yet: start a worker (it creates them) or publish")


@offsets_app.command()
def reset(
    to: Annotated[
        Literal["earliest", "latest"],
        typer.Option("--to", help="earliest: every retained record again; latest: none."),
    ],
    topic: Annotated[
        Literal["queries", "feedback", "both"],
        typer.Option(help="Which input topic's consumer group."),
    ] = "both",
) -> None:
    """Commit a start for the workers' consumer groups: what a group without committed
    offsets needs (a new deployment, a renamed RACER_APP_ID, expired offsets).

    Stop every worker first: a group with live members refuses it. ``earliest`` decides
    again every query the log still holds (and may add feedback older than the pending
    records' TTL as late); ``latest`` skips everything published so far.
    """
    from racer_online.kafka.offsets import input_groups
    from racer_online.kafka.offsets import reset as reset_group

    settings = Settings.load()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures come back as one line
    groups = input_groups(settings)
    names = {"queries": settings.topics.queries, "feedback": settings.topics.feedback}
    for which in ("queries", "feedback") if topic == "both" else (topic,):
        name = names[which]
        committed = asyncio.run(reset_group(settings, groups[name], name, to=to))
        where = ", ".join(f"{p}: {o}" for p, o in sorted(committed.items()))
        note(f"{groups[name]} on {name}: committed {to} ({where})")
