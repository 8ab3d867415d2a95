"""Outcomes datasets: which model answered which query. One format for every command.

An outcomes CSV has a ``question`` column (the query text), optionally ``query_id`` and
``task`` (or ``task_name``, the source that schedules group by), and per model a label
column ``y:<model>``: 1 correct, 0 wrong, or a score graded at ``correct_at``. Prices
come from ``price:<model>`` columns (the model's price is the column's mean), a prices
file (``model`` and ``price`` columns), or ``prices.csv`` beside the outcomes file. Model
names are free text (``org/model-a``, ``vendor:model.b``); the catalogue is the order of
the ``y:`` columns.

The shipped layout (no ``y:`` columns: every column after ``question`` is a model's
score, correct from 0.5 on) is still read. It ships inside the package
(``racer_online/data/llmrouter-9llm``, MIT, with its LICENSE and README);
``RACER_DATASET`` points elsewhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from racer_online import files
from racer_online.errors import InvalidInputError, RecordsFormatError
from racer_online.records import Records

CORRECT_AT = 0.5  # the shipped layout: commongen scores are fractional coverage
MAX_MODEL_NAME = 128  # as a scopes file and a query message allow
TASK_COLUMNS = ("task", "task_name")
PRICE_COLUMNS = ("price", "input_price_usd_per_M")  # in a prices file; the second: shipped


def default_dataset_dir() -> Path:
    from racer_online.settings import Settings

    override = Settings.load().dataset  # RACER_DATASET
    if override is not None:
        return override
    return Path(str(resources.files("racer_online.data").joinpath("llmrouter-9llm")))


@dataclass(frozen=True)
class Outcomes:
    """Which model answered which query; ``labels`` has shape (n, K)."""

    questions: tuple[str, ...]
    tasks: NDArray[np.str_]  # "" for every row when the file has no task column
    models: tuple[str, ...]
    labels: NDArray[np.bool_]
    prices: NDArray[np.float64]  # per model, in the data's unit (shipped: USD per M input)
    query_ids: tuple[str, ...] = ()  # from the query_id column, else the row positions
    name: str = "outcomes"  # for titles: the folder of outcomes.csv, else the file's stem
    priced: bool = False  # False: no price was given, ``prices`` is all zeros

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks in order of first appearance; () when the file has none."""
        return tuple(t for t in dict.fromkeys(self.tasks.tolist()) if t)


def load_outcomes(
    path: Path | str | None = None,
    *,
    correct_at: float | None = None,
    prices_file: Path | str | None = None,
) -> Outcomes:
    """Load an outcomes CSV (or the folder holding ``outcomes.csv``) and its prices.

    ``correct_at`` grades score labels (correct when >= it); without it ``y:`` labels must
    be 0 or 1. Every error names the file, and the line and column where there is one.
    """
    path = Path(path) if path is not None else default_dataset_dir()
    file = path / "outcomes.csv" if path.is_dir() else path
    header, rows = _read_csv(file)
    columns = _Columns.parse(file, header)
    at = correct_at if correct_at is not None else (CORRECT_AT if columns.shipped else None)
    labels = np.array([columns.labels(line, cells, at) for line, cells in rows], dtype=bool)
    labels = labels.reshape(len(rows), len(columns.models))
    prices, priced = columns.prices(rows)
    if not priced:
        sibling = file.parent / "prices.csv"
        given = Path(prices_file) if prices_file is not None else None
        if given is not None or sibling.exists():
            prices, priced = _prices_file(given or sibling, columns.models), True
    elif prices_file is not None:
        raise InvalidInputError(f"{file}: has price: columns and a prices file was given too")
    return Outcomes(
        questions=tuple(cells[columns.question] for _, cells in rows),
        tasks=np.array([columns.task(cells) for _, cells in rows], dtype=np.str_),
        models=columns.models,
        labels=labels,
        prices=prices,
        query_ids=tuple(
            columns.query_id(line, cells, position) for position, (line, cells) in enumerate(rows)
        ),
        name=file.parent.name if file.name == "outcomes.csv" else file.stem,
        priced=priced,
    )


def _read_csv(file: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the rows, each with the line it starts on; every row is complete."""
    header, rows = files.read_csv(file, what="the outcomes file")
    if not rows:
        raise InvalidInputError(f"{file}: no rows after the header")
    for line, cells in rows:
        if len(cells) != len(header):
            raise InvalidInputError(
                f"{file}, line {line}: {len(cells)} fields, the header has {len(header)}"
            )
    return [h.strip() for h in header], rows


@dataclass(frozen=True)
class _Columns:
    file: Path
    question: int
    models: tuple[str, ...]
    label_at: tuple[int, ...]
    price_at: tuple[int, ...] | None
    task_at: int | None
    id_at: int | None
    shipped: bool  # the shipped layout: bare model columns after ``question``

    @classmethod
    def parse(cls, file: Path, header: Sequence[str]) -> _Columns:
        duplicate = next((h for i, h in enumerate(header) if h in header[:i]), None)
        if duplicate is not None:
            raise InvalidInputError(f"{file}: column {duplicate!r} appears twice in the header")
        if "question" not in header:
            raise InvalidInputError(f"{file}: no question column (the query text)")
        question = header.index("question")
        labelled = [(i, h[2:]) for i, h in enumerate(header) if h.startswith("y:")]
        shipped = not labelled
        if shipped:  # every column after the question is a model's score
            labelled = [(i, h) for i, h in enumerate(header) if i > question]
        if not labelled:
            raise InvalidInputError(f"{file}: no y:<model> label columns")
        models = tuple(m for _, m in labelled)
        for m in models:
            if not 0 < len(m) <= MAX_MODEL_NAME or m != m.strip():
                raise InvalidInputError(
                    f"{file}: model name {m!r} must be 1 to {MAX_MODEL_NAME} characters "
                    "without surrounding spaces"
                )
        priced = {h[6:]: i for i, h in enumerate(header) if h.startswith("price:")}
        stray = sorted(set(priced) - set(models))
        if stray:
            raise InvalidInputError(f"{file}: column price:{stray[0]} names no y: model column")
        if priced and len(priced) != len(models):
            missing = next(m for m in models if m not in priced)
            raise InvalidInputError(
                f"{file}: no price:{missing} column (give a price column for every model or none)"
            )
        tasks = [header.index(c) for c in TASK_COLUMNS if c in header]
        return cls(
            file, question, models, tuple(i for i, _ in labelled),
            tuple(priced[m] for m in models) if priced else None,
            tasks[0] if tasks else None,
            header.index("query_id") if "query_id" in header else None, shipped,
        )  # fmt: skip

    def _number(self, line: int, cells: list[str], at: int, name: str) -> float:
        text = cells[at].strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidInputError(
                f"{self.file}, line {line}, column {name}: {text!r} is not a number"
            )
        return value

    def labels(self, line: int, cells: list[str], correct_at: float | None) -> list[bool]:
        out = []
        for m, at in zip(self.models, self.label_at, strict=True):
            name = m if self.shipped else f"y:{m}"
            value = self._number(line, cells, at, name)
            if correct_at is None and value not in (0.0, 1.0):
                raise InvalidInputError(
                    f"{self.file}, line {line}, column {name}: {cells[at].strip()!r} is not "
                    "0 or 1 (scores need --correct-at)"
                )
            out.append(value >= (0.5 if correct_at is None else correct_at))
        return out

    def prices(self, rows: list[tuple[int, list[str]]]) -> tuple[NDArray[np.float64], bool]:
        if self.price_at is None:
            return np.zeros(len(self.models)), False
        table = np.array([
            [self._number(line, cells, at, f"price:{m}")
             for m, at in zip(self.models, self.price_at, strict=True)]
            for line, cells in rows
        ])  # fmt: skip
        negative = np.argwhere(table < 0)
        if len(negative):
            row, j = negative[0]
            raise InvalidInputError(
                f"{self.file}, line {rows[row][0]}, column price:{self.models[j]}: a price is >= 0"
            )
        return table.mean(axis=0), True

    def task(self, cells: list[str]) -> str:
        return "" if self.task_at is None else cells[self.task_at].strip()

    def query_id(self, line: int, cells: list[str], position: int) -> str:
        if self.id_at is None:
            return str(position)
        qid = cells[self.id_at].strip()
        if not qid:
            raise InvalidInputError(f"{self.file}, line {line}, column query_id: it is empty")
        return qid


def _prices_file(file: Path, models: tuple[str, ...]) -> NDArray[np.float64]:
    """Per-model prices from a CSV with ``model`` and ``price`` columns."""
    header, rows = _read_csv(file)
    column = next((c for c in PRICE_COLUMNS if c in header), None)
    if "model" not in header or column is None:
        raise InvalidInputError(f"{file}: a prices file needs a model and a price column")
    name, price = header.index("model"), header.index(column)
    table: dict[str, float] = {}
    for line, cells in rows:
        text = cells[price].strip()
        try:
            table[cells[name].strip()] = float(text)
        except ValueError:
            raise InvalidInputError(
                f"{file}, line {line}, column {column}: {text!r} is not a number"
            ) from None
    missing = [m for m in models if m not in table]
    if missing:
        raise InvalidInputError(f"{file}: no price for model {missing[0]!r}")
    return np.array([table[m] for m in models])


def scopes_toml(outcomes: Outcomes, *, scope: str = "default", alpha: float = 0.1,
                delta: float = 0.1) -> str:  # fmt: skip
    """A scopes file routing over the data's models at their prices, in catalogue order."""
    lines = [f"[scopes.{scope}]", f"alpha = {alpha}", f"delta = {delta}",
             f"[scopes.{scope}.models]"]  # fmt: skip
    # JSON string escapes are TOML basic-string escapes: any model name is a quoted key.
    lines += [
        f"{json.dumps(m)} = {{ price = {float(p)!r} }}"
        for m, p in zip(outcomes.models, outcomes.prices, strict=True)
    ]
    return "\n".join(lines) + "\n"


def records_from_outcomes(
    outcomes: Outcomes,
    rows: NDArray[np.intp],
    scores: NDArray[np.float64],
    *,
    p_abstain: NDArray[np.float64] | None = None,
    scope: str = "default",
) -> Records:
    """Records of ``rows`` of an outcomes dataset: ``scores`` (len(rows), K) of a base
    router in the data's model order, labels from the data, costs from its prices."""
    shape = (len(rows), len(outcomes.models))
    if scores.shape != shape:
        raise RecordsFormatError(f"scores of shape {scores.shape} for {shape} (rows, models)")
    return Records(
        query_ids=tuple(outcomes.query_ids[i] for i in rows),
        models=outcomes.models,
        scores=scores,
        labels=outcomes.labels[rows].astype(np.float64),
        scopes=(scope,) * len(rows),
        p_abstain=p_abstain,
        costs=np.broadcast_to(outcomes.prices, shape).copy() if outcomes.priced else None,
    )
