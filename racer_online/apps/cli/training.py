"""``racer-online train-router``: read outcomes, fit a router on a seeded split, save it,
report its held-out quality."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from racer_online.apps.cli.common import CorrectAtOpt, DataOpt, JsonOpt, app
from racer_online.core.scoring import check_choice
from racer_online.errors import InvalidInputError

if TYPE_CHECKING:
    from racer_online.routers.training import TrainingReport


@app.command("train-router")
def train_router(
    save_to: Annotated[
        Path, typer.Option("--out", help="Where to save: writes OUT.json and OUT.npz.")
    ],
    data: DataOpt = None,
    correct_at: CorrectAtOpt = None,
    kind: Annotated[str, typer.Option(help="text (TF-IDF) or knn (embeddings).")] = "text",
    seed: int = 0,
    train_fraction: Annotated[float, typer.Option(help="Share of questions to train on.")] = 0.4,
    as_json: JsonOpt = False,
) -> None:
    """Train a base router; report per-model AUC and calibration error on held-out rows."""
    report = train_router_command(data, save_to, kind, seed, train_fraction, correct_at=correct_at)
    print(json.dumps(report.to_dict()) if as_json else report.render())


def train_router_command(
    data: Path | None,
    out: Path,
    kind: str = "text",
    seed: int = 0,
    train_fraction: float = 0.4,
    *,
    correct_at: float | None = None,
) -> TrainingReport:
    """Train a ``kind`` router on a seeded split of ``data``, save it at ``out``, report.

    ``data`` is an outcomes CSV or its folder (default: the shipped dataset). The router is
    written to ``out`` with suffix ``.json`` (header) and ``.npz`` (arrays).
    """
    from racer_online.datasets import default_dataset_dir, load_outcomes
    from racer_online.routers.files import ROUTER_KINDS, router_paths, save_router
    from racer_online.routers.training import (
        TrainingReport,
        fit_router,
        held_out_quality,
        split_rows,
    )

    check_choice("router kind", kind, tuple(ROUTER_KINDS))  # before reading any data
    outcomes = load_outcomes(data, correct_at=correct_at)
    train, test = split_rows(outcomes, train_fraction=train_fraction, seed=seed)
    started = time.perf_counter()
    router, settings = fit_router(outcomes, train, kind=kind, seed=seed)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = router.score_texts([outcomes.questions[i] for i in test])
    score_ms = 1000 * (time.perf_counter() - started) / len(test)
    training = {"data": str(data or default_dataset_dir()), "rows": len(outcomes), **settings}
    training |= {"seed": seed, "train_fraction": train_fraction, "n_train": len(train)}
    try:
        header = save_router(router, out, training=training)
    except OSError as exc:
        raise InvalidInputError(f"cannot write the router to {out}: {exc}") from None
    return TrainingReport(
        kind=kind,
        header_file=header,
        arrays_file=router_paths(out)[1],
        n_train=len(train),
        n_test=len(test),
        seed=seed,
        train_fraction=train_fraction,
        train_seconds=train_seconds,
        score_ms_per_query=score_ms,
        options=held_out_quality(scores, outcomes.labels[test]),
    )
