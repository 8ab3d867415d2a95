"""The shipped real routing dataset: outcomes of 9 LLMs on 6,108 queries.

It ships inside the package (``racer_online/data/llmrouter-9llm``, MIT, with its LICENSE
and README); ``RACER_DATASET`` points elsewhere.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from racer_online.errors import InvalidInputError

CORRECT_AT = 0.5  # commongen scores are fractional coverage
FIRST_MODEL_COLUMN = "codegemma-7b"  # models are the columns from here on


def default_dataset_dir() -> Path:
    override = os.environ.get("RACER_DATASET")
    if override:
        return Path(override)
    return Path(str(resources.files("racer_online.data").joinpath("llmrouter-9llm")))


@dataclass(frozen=True)
class Outcomes:
    """Which model answered which query; ``labels`` has shape (n, K)."""

    questions: tuple[str, ...]
    tasks: NDArray[np.str_]
    models: tuple[str, ...]
    labels: NDArray[np.bool_]
    prices: NDArray[np.float64]  # USD per million input tokens, per model

    def __len__(self) -> int:
        return len(self.questions)


def load_outcomes(path: Path | str | None = None) -> Outcomes:
    """Load ``outcomes.csv`` (or the folder holding it) and the matching prices."""
    path = Path(path) if path is not None else default_dataset_dir()
    file = path / "outcomes.csv" if path.is_dir() else path
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration) as exc:
        raise InvalidInputError(f"cannot read the outcomes dataset at {file}: {exc}") from exc
    if FIRST_MODEL_COLUMN not in header or "question" not in header:
        raise InvalidInputError(f"{file}: not an outcomes file (no question or model columns)")
    first = header.index(FIRST_MODEL_COLUMN)
    models = tuple(header[first:])
    scores = np.array([[float(v) for v in row[first:]] for row in rows])
    return Outcomes(
        questions=tuple(row[header.index("question")] for row in rows),
        tasks=np.array([row[header.index("task_name")] for row in rows]),
        models=models,
        labels=scores >= CORRECT_AT,
        prices=_prices(file.parent / "prices.csv", models),
    )


def _prices(file: Path, models: tuple[str, ...]) -> NDArray[np.float64]:
    """Input price per model; models missing from the price list cost 0."""
    if not file.exists():
        return np.zeros(len(models))
    with open(file, newline="", encoding="utf-8") as f:
        table = {row["model"]: float(row["input_price_usd_per_M"]) for row in csv.DictReader(f)}
    return np.array([table.get(m, 0.0) for m in models])
