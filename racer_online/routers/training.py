"""Fit a router on a seeded split of outcomes and measure its held-out AUC and ECE.

The split is by question text, so a question that occurs twice in the data is never on
both sides. Reading the data and saving the router is the ``train-router`` command's part
(`racer_online.apps.cli.training`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from racer_online.core.scoring import check_choice
from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError
from racer_online.routers.base import RouterScores
from racer_online.routers.files import ROUTER_KINDS
from racer_online.routers.knn import KnnRouter, train_knn_router
from racer_online.routers.text import DEFAULT_C, TextRouter, train_text_router

ABSTAIN_ROW = "(no model correct)"
ECE_BINS = 10


@dataclass(frozen=True)
class OptionQuality:
    """Held-out quality of one score column (a model, or ``p_abstain``)."""

    option: str
    auc: float | None  # None when the held-out labels are all equal
    ece: float
    positive_rate: float  # share of held-out queries where the option is right
    mean_score: float


@dataclass(frozen=True)
class TrainingReport:
    """What ``train-router`` did and how well the router scores held-out queries."""

    kind: str
    header_file: Path
    arrays_file: Path
    n_train: int
    n_test: int
    seed: int
    train_fraction: float
    train_seconds: float
    score_ms_per_query: float  # one batch of all held-out queries, divided by their number
    options: tuple[OptionQuality, ...]  # the models, then ABSTAIN_ROW

    @property
    def mean_model_auc(self) -> float | None:
        """Mean AUC over the models (not ``p_abstain``) whose AUC is defined."""
        aucs = [o.auc for o in self.options if o.auc is not None and o.option != ABSTAIN_ROW]
        return float(np.mean(aucs)) if aucs else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_model_auc": self.mean_model_auc} | {
            "header_file": str(self.header_file),
            "arrays_file": str(self.arrays_file),
        }

    def render(self) -> str:
        """A plain-text table, one line per option."""
        width = max(len(o.option) for o in self.options)
        lines = [
            f"{self.kind} router saved to {self.header_file} (+ {self.arrays_file.name}); "
            f"trained on {self.n_train} queries in {self.train_seconds:.1f} s, "
            f"held out {self.n_test} (seed {self.seed})",
            f"{'option':<{width}}  {'AUC':>6}  {'ECE':>6}  {'correct':>7}  {'mean p':>6}",
        ]
        for o in self.options:
            auc = "-" if o.auc is None else f"{o.auc:.3f}"
            lines.append(
                f"{o.option:<{width}}  {auc:>6}  {o.ece:>6.3f}  {o.positive_rate:>7.3f}  "
                f"{o.mean_score:>6.3f}"
            )
        mean_auc = "-" if self.mean_model_auc is None else f"{self.mean_model_auc:.3f}"
        lines.append(
            f"mean model AUC {mean_auc}; scoring "
            f"{self.score_ms_per_query:.3f} ms per query in one batch"
        )
        return "\n".join(lines)


def expected_calibration_error(
    probabilities: NDArray[np.float64], outcomes: NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """ECE with ``bins`` equal-width bins: ``sum_b (n_b / n) |mean(y_b) - mean(p_b)|``.

    ``probabilities`` and ``outcomes`` have shape (n,); scikit-learn has no ECE.
    """
    which = np.minimum((probabilities * bins).astype(np.intp), bins - 1)
    gap = np.bincount(which, weights=outcomes.astype(np.float64) - probabilities, minlength=bins)
    return float(np.abs(gap).sum() / max(len(probabilities), 1))


def held_out_quality(scores: RouterScores, labels: NDArray[np.bool_]) -> tuple[OptionQuality, ...]:
    """AUC and ECE of every model column and of ``p_abstain``; ``labels`` is (n, K)."""
    columns = [*scores.scores.T]
    targets = [*labels.T]
    names = [*scores.models]
    if scores.p_abstain is not None:
        columns.append(scores.p_abstain)
        targets.append(~labels.any(axis=1))
        names.append(ABSTAIN_ROW)
    return tuple(
        OptionQuality(
            option=name,
            auc=float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
            ece=expected_calibration_error(p, y),
            positive_rate=float(y.mean()),
            mean_score=float(p.mean()),
        )
        for name, p, y in zip(names, columns, targets, strict=True)
    )


def split_rows(
    outcomes: Outcomes, *, train_fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Seeded (train, test) row indices; all copies of a question fall on one side."""
    if not 0.0 < train_fraction < 1.0:
        raise InvalidInputError(f"train fraction must lie in (0, 1), got {train_fraction}")
    _, question_ids = np.unique(np.array(outcomes.questions, dtype=object), return_inverse=True)
    n_questions = int(question_ids.max()) + 1 if len(question_ids) else 0
    rank = np.random.default_rng(seed).permutation(n_questions)[question_ids]
    in_train = rank < round(train_fraction * n_questions)
    train, test = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    if len(train) < 2 or len(test) < 1:
        raise InvalidInputError(
            f"a {train_fraction} split of {len(outcomes)} rows leaves {len(train)} to train "
            f"and {len(test)} to test: need at least 2 and 1"
        )
    return train, test


def fit_router(
    outcomes: Outcomes, train_rows: NDArray[np.intp], *, kind: str = "text", seed: int = 0
) -> tuple[TextRouter | KnnRouter, dict[str, Any]]:
    """A ``kind`` router fitted on ``train_rows``, and the settings it was fitted with."""
    check_choice("router kind", kind, tuple(ROUTER_KINDS))
    if kind == "text":
        settings: dict[str, Any] = {"regularisation_c": DEFAULT_C, "min_df": 2}
        return train_text_router(outcomes, train_rows=train_rows, **settings), settings
    settings = {"neighbours": 25, "dimensions": 128, "prior_strength": 2.0, "min_df": 2}
    return train_knn_router(outcomes, train_rows=train_rows, seed=seed, **settings), settings
