"""A text router: TF-IDF word 1-2 grams + one logistic regression per model.

One more regression learns "no model is correct"; its probability is ``p_abstain``
(docs/method.md sections 2 and 7). Inference is one sparse matrix product for the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError
from racer_online.messages import QueryMessage
from racer_online.routers.base import RouterScores, raise_first_problem
from racer_online.routers.features import TfidfFeatures, fit_tfidf

DEFAULT_C = 2.0  # inverse L2 strength: of 1, 2, 3, 10, the best ECE at near-best AUC


@dataclass(frozen=True)
class TextRouter:
    """Logistic regressions on TF-IDF features of the query text.

    Attributes
    ----------
    models : tuple of str, length K
    features : TfidfFeatures
        The text -> (n, V) map.
    coefficients : ndarray of float64, shape (K + 1, V)
        One row per model, then the row of "no model correct".
    intercepts : ndarray of float64, shape (K + 1,)
    """

    models: tuple[str, ...]
    features: TfidfFeatures
    coefficients: NDArray[np.float64]
    intercepts: NDArray[np.float64]

    kind: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        expected = (len(self.models) + 1, self.features.size)
        if self.coefficients.shape != expected or self.intercepts.shape != expected[:1]:
            raise InvalidInputError(
                f"text router arrays disagree: coefficients {self.coefficients.shape}, "
                f"intercepts {self.intercepts.shape}, expected {expected} for "
                f"{len(self.models)} models and {self.features.size} terms"
            )

    def input_problem(self, query: QueryMessage) -> str | None:
        if query.text is None:
            return f"query {query.query_id!r} has no text for the text router"
        return None

    def score(self, queries: Sequence[QueryMessage]) -> RouterScores:
        raise_first_problem(self, queries)
        return self.score_texts([q.text or "" for q in queries])

    def score_texts(self, texts: Sequence[str]) -> RouterScores:
        """Scores of raw texts; ``scores`` has shape (n, K), ``p_abstain`` (n,)."""
        logits = self.features.transform(texts) @ self.coefficients.T + self.intercepts
        probabilities = np.asarray(expit(logits), dtype=np.float64)
        return RouterScores(self.models, probabilities[:, :-1], probabilities[:, -1])

    def params(self) -> dict[str, Any]:
        return {"features": self.features.params()}

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {
            **self.features.arrays(),
            "coefficients": self.coefficients,
            "intercepts": self.intercepts,
        }

    @classmethod
    def from_saved(
        cls, models: tuple[str, ...], params: dict[str, Any], arrays: dict[str, NDArray[Any]]
    ) -> TextRouter:
        return cls(
            models,
            TfidfFeatures.from_saved(params["features"], arrays),
            arrays["coefficients"],
            arrays["intercepts"],
        )


def train_text_router(
    outcomes: Outcomes,
    *,
    train_rows: NDArray[np.intp],
    regularisation_c: float = DEFAULT_C,
    min_df: int = 2,
) -> TextRouter:
    """Fit the text router on the rows ``train_rows`` of ``outcomes``.

    Parameters
    ----------
    outcomes : Outcomes
        Questions and their (n, K) correctness labels.
    train_rows : ndarray of int, shape (m,)
        Row indices to train on.
    regularisation_c : float
        ``C`` of every `LogisticRegression` (larger: weaker L2 penalty).
    min_df : int
        A term enters the vocabulary if at least this many training questions hold it.
    """
    if len(train_rows) < 2:
        raise InvalidInputError(f"need at least 2 training rows, got {len(train_rows)}")
    texts = [outcomes.questions[i] for i in train_rows]
    features = fit_tfidf(texts, min_df=min_df)
    x = features.transform(texts)
    labels = outcomes.labels[train_rows]
    targets = np.column_stack([labels, ~labels.any(axis=1)])
    coefficients = np.zeros((targets.shape[1], features.size))
    intercepts = np.zeros(targets.shape[1])
    with threadpool_limits(limits=1):  # lbfgs on 2 cores ran 7x slower with a thread pool
        for j, y in enumerate(targets.T):
            if y.all() or not y.any():  # one class only: a constant, kept off 0 and 1
                intercepts[j] = logit((y.sum() + 0.5) / (len(y) + 1.0))
                continue
            fitted = LogisticRegression(C=regularisation_c, max_iter=2000).fit(x, y)
            coefficients[j] = fitted.coef_[0]
            intercepts[j] = fitted.intercept_[0]
    return TextRouter(outcomes.models, features, coefficients, intercepts)
