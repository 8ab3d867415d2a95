"""``racer-online records``: a records CSV from an outcomes dataset and a trained router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from racer_online.apps.cli.common import (
    CorrectAtOpt,
    DataOpt,
    PricesOpt,
    app,
    note,
    plural,
    read_outcomes,
)
from racer_online.errors import InvalidInputError
from racer_online.messages import SAFE_NAME_PATTERN


@app.command()
def records(
    router: Annotated[Path, typer.Option(help="A trained router (train-router's OUT.json).")],
    save_to: Annotated[Path, typer.Option("--out", help="The records CSV to write.")],
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    prices: PricesOpt = None,
    scope: Annotated[str, typer.Option(help="The scope column's value.")] = "default",
    every_row: Annotated[
        bool, typer.Option("--all", help="Every row, also those the router trained on.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="At most this many rows, the first in file order.")
    ] = None,
) -> None:
    """Write a records CSV: p: scores from the router, y: labels and cost: from the data.

    By default only the rows the router did not train on (from the split in its header),
    so the scores are honest held-out scores; the file feeds calibrate, publish and feedback.
    """
    import re

    from racer_online.apps.replay import held_out_rows
    from racer_online.datasets import records_from_outcomes
    from racer_online.records import write_records
    from racer_online.routers.files import load_router, router_paths

    if limit is not None and limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {limit}")
    if not re.fullmatch(SAFE_NAME_PATTERN, scope):
        raise InvalidInputError(f"--scope {scope!r}: use letters, digits, '.', '_' or '-'")
    outcomes = read_outcomes(data, correct_at, prices)
    base = load_router(router)
    held_out = None if every_row else held_out_rows(outcomes, router_paths(router)[0])
    rows = np.arange(len(outcomes)) if held_out is None else held_out
    rows = rows[:limit] if limit is not None else rows
    if not len(rows):
        raise InvalidInputError("no rows to write")
    scored = base.score_texts([outcomes.questions[i] for i in rows]).select(outcomes.models)
    made = records_from_outcomes(
        outcomes, rows, scored.scores, p_abstain=scored.p_abstain, scope=scope
    )
    try:
        write_records(save_to, made)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {save_to}: {exc.strerror}") from None
    which = "every row" if held_out is None else "the rows the router did not train on"
    note(f"wrote {plural(len(made), 'record')} ({which}) to {save_to}")
