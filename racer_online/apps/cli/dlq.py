"""``racer-online dlq``: what the workers sent to the dead-letter topic, and why."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from racer_online.apps.cli.common import app, note, out, plural
from racer_online.errors import InvalidInputError
from racer_online.messages import DeadLetter
from racer_online.settings import Settings

PAYLOAD_PREFIX = 120  # characters of the payload shown


@app.command()
def dlq(
    reason: Annotated[
        str | None, typer.Option(help="Only letters whose reason or error contains this.")
    ] = None,
    last: Annotated[int | None, typer.Option(help="Only the last N (by time).")] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="JSON lines: one object a letter, oldest first, no base64."),
    ] = False,
) -> None:
    """What was dead-lettered, and why: reason, source offset, start of the payload.

    Reads the dead-letter topic from its start to its end offsets at the time of the call.
    With --json, one JSON object a line (a stream: pipe it to jq or grep).
    """
    from racer_online.kafka.dead_letters import read_dead_letters

    if last is not None and last < 1:
        raise InvalidInputError(f"--last must be >= 1, got {last}")
    settings = Settings.load()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # failures come back as one line
    letters = sorted(asyncio.run(read_dead_letters(settings)), key=lambda d: d.at)
    if reason is not None:
        wanted = reason.lower()
        letters = [d for d in letters if wanted in f"{d.reason} {d.error_class}".lower()]
    letters = letters[-last:] if last is not None else letters
    if as_json:
        for d in letters:
            print(json.dumps(_row(d)))
        return
    title = f"{settings.topics.dlq}: {plural(len(letters), 'dead letter')}"
    table = Table("at", "source", "error", "reason", "payload", title=title)
    for d in letters:
        row = _row(d)
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at)),
                      f"{d.source_topic}[{d.partition}]@{d.offset}", d.error_class, d.reason,
                      row["payload"])  # fmt: skip
    out.print(table)
    if not letters:
        note("no dead letters" + (f" matching {reason!r}" if reason else ""))


def _row(letter: DeadLetter) -> dict[str, Any]:
    """The letter without its base64 payload, and the payload's start as text."""
    raw = letter.raw
    payload = None if raw is None else raw[: PAYLOAD_PREFIX * 4].decode(errors="backslashreplace")
    fields = letter.model_dump(exclude={"raw_b64"})
    return fields | {"payload": None if payload is None else payload[:PAYLOAD_PREFIX]}
