"""``racer-online offsets reset``: where the workers' consumer groups start, set by hand."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

import typer

from racer_online.apps.cli.common import app, note
from racer_online.settings import Settings

offsets_app = typer.Typer(
    help="The workers' committed offsets on the queries and feedback topics.",
    no_args_is_help=True,
)
app.add_typer(offsets_app, name="offsets")


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
