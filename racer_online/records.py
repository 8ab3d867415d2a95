"""The records CSV: the one offline interchange format.

Columns: ``query_id``, optional ``scope``, per model ``p:<model>`` (score in [0, 1]) and
``y:<model>`` (0/1, blank = not graded), optional ``p:__abstain__`` and ``cost:<model>``.
Model (catalogue) order is the order of the ``p:`` columns.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from racer_online import files
from racer_online.errors import RecordsFormatError

ABSTAIN = "__abstain__"


@dataclass(frozen=True)
class Records:
    """Scores and labels of ``n`` queries over ``K`` models; NaN labels are ungraded."""

    query_ids: tuple[str, ...]
    models: tuple[str, ...]
    scores: NDArray[np.float64]  # (n, K)
    labels: NDArray[np.float64]  # (n, K), 0/1 or NaN
    scopes: tuple[str, ...] | None = None
    p_abstain: NDArray[np.float64] | None = None  # (n,)
    costs: NDArray[np.float64] | None = None  # (n, K)
    lines: tuple[int, ...] | None = None  # where each record starts in the file read

    def __len__(self) -> int:
        return len(self.query_ids)

    def fully_graded(self) -> Records:
        """The records with a label for every model (only they may calibrate)."""
        return self.take(np.flatnonzero(~np.isnan(self.labels).any(axis=1)))

    def take(self, rows: NDArray[np.intp]) -> Records:
        def pick(a: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
            return None if a is None else a[rows]

        return replace(
            self,
            query_ids=tuple(self.query_ids[i] for i in rows),
            scopes=None if self.scopes is None else tuple(self.scopes[i] for i in rows),
            lines=None if self.lines is None else tuple(self.lines[i] for i in rows),
            scores=self.scores[rows],
            labels=self.labels[rows],
            p_abstain=pick(self.p_abstain),
            costs=pick(self.costs),
        )


def read_records(path: Path | str) -> Records:
    """Read a records CSV; every malformed cell raises with its line and column."""
    header, lines = files.read_csv(path, what="the records file", error=RecordsFormatError)
    columns = _Columns.parse(header, path)
    rows = [columns.row(cells, line) for line, cells in lines]
    return columns.build(rows)


def write_records(path: Path | str, records: Records) -> None:
    """Write records in the same format (blank for ungraded labels)."""
    header = ["query_id"] + (["scope"] if records.scopes else [])
    header += [f"p:{m}" for m in records.models] + [f"y:{m}" for m in records.models]
    header += [f"p:{ABSTAIN}"] if records.p_abstain is not None else []
    header += [f"cost:{m}" for m in records.models] if records.costs is not None else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        for i, qid in enumerate(records.query_ids):
            row: list[object] = [qid, *([records.scopes[i]] if records.scopes else [])]
            row += [f"{v:.6g}" for v in records.scores[i]]
            row += ["" if math.isnan(v) else int(v) for v in records.labels[i]]
            row += [f"{records.p_abstain[i]:.6g}"] if records.p_abstain is not None else []
            row += [f"{v:.6g}" for v in records.costs[i]] if records.costs is not None else []
            out.writerow(row)


@dataclass(frozen=True)
class _Columns:
    path: str
    index: dict[str, int]
    models: tuple[str, ...]

    @classmethod
    def parse(cls, header: Sequence[str], path: Path | str) -> _Columns:
        index = {name.strip(): i for i, name in enumerate(header)}
        if len(index) != len(header):
            raise RecordsFormatError(f"{path}: duplicate column names in the header")
        if "query_id" not in index:
            raise RecordsFormatError(f"{path}: no query_id column")
        models = tuple(c[2:] for c in index if c.startswith("p:") and c != f"p:{ABSTAIN}")
        if not models:
            raise RecordsFormatError(f"{path}: no p:<model> score columns")
        for m in models:
            if f"y:{m}" not in index:
                raise RecordsFormatError(f"{path}: score column p:{m} has no label column y:{m}")
        stray = [
            c for c in index if c.startswith(("y:", "cost:")) and c.split(":", 1)[1] not in models
        ]
        if stray:
            raise RecordsFormatError(f"{path}: column {stray[0]} names no model with a p: column")
        has_costs = [f"cost:{m}" in index for m in models]
        if any(has_costs) and not all(has_costs):
            raise RecordsFormatError(f"{path}: cost columns must be given for every model or none")
        return cls(str(path), index, models)

    def row(self, cells: list[str], line: int) -> _Row:
        if len(cells) != len(self.index):
            raise RecordsFormatError(
                f"{self.path}, line {line}: {len(cells)} fields, the header has {len(self.index)}"
            )

        def number(column: str, *, unit: bool = True) -> float:
            text = cells[self.index[column]].strip()
            try:
                value = float(text)
            except ValueError:
                raise RecordsFormatError(
                    f"{self.path}, line {line}, column {column}: {text!r} is not a number"
                ) from None
            low, high = (0.0, 1.0) if unit else (0.0, math.inf)
            if not (math.isfinite(value) and low <= value <= high):
                span = "[0, 1]" if unit else ">= 0 and finite"
                raise RecordsFormatError(
                    f"{self.path}, line {line}, column {column}: {text!r} is not in {span}"
                )
            return value

        qid = cells[self.index["query_id"]].strip()
        if not qid:
            raise RecordsFormatError(f"{self.path}, line {line}: empty query_id")
        labels = [_label(cells[self.index[f"y:{m}"]]) for m in self.models]
        for m, y in zip(self.models, labels, strict=True):
            if y is None:
                raise RecordsFormatError(
                    f"{self.path}, line {line}, column y:{m}: labels must be 0, 1 or blank"
                )
        return _Row(
            line,
            qid,
            cells[self.index["scope"]].strip() if "scope" in self.index else None,
            [number(f"p:{m}") for m in self.models],
            labels,
            number(f"p:{ABSTAIN}") if f"p:{ABSTAIN}" in self.index else None,
            [number(f"cost:{m}", unit=False) for m in self.models]
            if f"cost:{self.models[0]}" in self.index
            else None,
        )

    def build(self, rows: list[_Row]) -> Records:
        if not rows:
            raise RecordsFormatError(f"{self.path}: no records")
        shape = (len(rows), len(self.models))

        def column(name: str) -> NDArray[np.float64]:
            return np.asarray([getattr(r, name) for r in rows], dtype=np.float64)

        return Records(
            query_ids=tuple(r.query_id for r in rows),
            lines=tuple(r.line for r in rows),
            models=self.models,
            scores=column("scores").reshape(shape),
            labels=column("labels").reshape(shape),
            scopes=tuple(r.scope or "" for r in rows) if "scope" in self.index else None,
            p_abstain=column("p_abstain") if rows[0].p_abstain is not None else None,
            costs=column("costs").reshape(shape) if rows[0].costs is not None else None,
        )


def _label(text: str) -> float | None:
    """0.0, 1.0, NaN for blank (not graded), None for anything else."""
    return {"": math.nan, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}.get(text.strip())


class _Row(NamedTuple):
    line: int
    query_id: str
    scope: str | None
    scores: list[float]
    labels: list[float | None]
    p_abstain: float | None
    costs: list[float] | None
