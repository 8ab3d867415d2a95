"""A k-nearest-neighbour router on query embeddings (cosine similarity).

A query's score for model ``j`` is the smoothed share of its ``k`` nearest reference
queries that model ``j`` answered; ``p_abstain`` is the smoothed share that no model
answered: ``(hits_j + a * r_j) / (k + a)``, with ``a = prior_strength`` and ``r_j`` the
share over all references.

No embedding model can be downloaded here, so `train_knn_router` makes its own: a
`TextEmbedder` (TruncatedSVD of the TF-IDF features, an LSA embedding) saved with the router.
Queries may then carry text (embedded by the router) or an ``embedding`` of that same space.
With a real embedding model, build the router with `fit_knn_router` from its vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import TruncatedSVD
from threadpoolctl import threadpool_limits

from racer_online.datasets import Outcomes
from racer_online.errors import InvalidInputError
from racer_online.messages import QueryMessage
from racer_online.routers.base import RouterScores, raise_first_problem
from racer_online.routers.features import TextEmbedder, TfidfFeatures, fit_tfidf, unit_rows

CHUNK = 1024  # queries per similarity block: bounds memory at CHUNK x references floats


@dataclass(frozen=True)
class KnnRouter:
    """Scores from the labels of the nearest reference queries.

    Attributes
    ----------
    models : tuple of str, length K
    references : ndarray of float64, shape (m, d)
        Unit-norm embeddings of the reference queries.
    labels : ndarray of bool, shape (m, K)
        Which model answered each reference query.
    neighbours : int
        ``k``, in [1, m].
    prior_strength : float
        Pseudo-count of the base rates mixed into every score (0: plain mean).
    embedder : TextEmbedder or None
        Embeds queries that carry text but no embedding.
    """

    models: tuple[str, ...]
    references: NDArray[np.float64]
    labels: NDArray[np.bool_]
    neighbours: int
    prior_strength: float
    embedder: TextEmbedder | None = None

    kind: ClassVar[str] = "knn"

    def __post_init__(self) -> None:
        m = self.references.shape[0]
        if self.references.ndim != 2 or self.labels.shape != (m, len(self.models)):
            raise InvalidInputError(
                f"knn router arrays disagree: references {self.references.shape}, labels "
                f"{self.labels.shape}, {len(self.models)} models"
            )
        if not 1 <= self.neighbours <= m or not self.prior_strength >= 0:
            raise InvalidInputError(
                f"need 1 <= neighbours <= {m} references and prior_strength >= 0; got "
                f"{self.neighbours} and {self.prior_strength}"
            )
        if self.embedder is not None and self.embedder.components.shape[0] != self.dimension:
            raise InvalidInputError("the embedder's dimension differs from the references'")

    @property
    def dimension(self) -> int:
        return int(self.references.shape[1])

    @cached_property
    def _targets(self) -> NDArray[np.float64]:
        """(m, K + 1): the labels, then "no model correct"."""
        return np.column_stack([self.labels, ~self.labels.any(axis=1)]).astype(np.float64)

    @cached_property
    def _base_rates(self) -> NDArray[np.float64]:
        """(K + 1,): the share of references each option is right on."""
        return np.asarray(self._targets.mean(axis=0), dtype=np.float64)

    def input_problem(self, query: QueryMessage) -> str | None:
        if query.embedding is not None:
            if len(query.embedding) != self.dimension:
                return (
                    f"query {query.query_id!r} has an embedding of length "
                    f"{len(query.embedding)}; the knn router needs {self.dimension}"
                )
            return None
        if query.text is not None and self.embedder is not None:
            return None
        wanted = "no embedding" if self.embedder is None else "neither an embedding nor text"
        return f"query {query.query_id!r} has {wanted} for the knn router"

    def score(self, queries: Sequence[QueryMessage]) -> RouterScores:
        raise_first_problem(self, queries)
        embeddings = np.zeros((len(queries), self.dimension))
        to_embed = []
        for i, query in enumerate(queries):
            if query.embedding is not None:
                embeddings[i] = query.embedding
            else:
                to_embed.append(i)
        if to_embed:
            assert self.embedder is not None  # input_problem checked it
            texts = [queries[i].text or "" for i in to_embed]
            embeddings[to_embed] = self.embedder.embed(texts)
        return self.score_embeddings(embeddings)

    def score_texts(self, texts: Sequence[str]) -> RouterScores:
        """Scores of raw texts, embedded by the router's own embedder."""
        if self.embedder is None:
            raise InvalidInputError("this knn router has no text embedder: send embeddings")
        return self.score_embeddings(self.embedder.embed(texts))

    def score_embeddings(self, embeddings: NDArray[np.float64]) -> RouterScores:
        """Scores of embeddings of shape (n, d); a zero vector gets the base rates."""
        queries = unit_rows(np.asarray(embeddings, dtype=np.float64))
        if queries.shape[1] != self.dimension:
            raise InvalidInputError(
                f"embeddings have {queries.shape[1]} dimensions; the knn router needs "
                f"{self.dimension}"
            )
        k, a, base_rates = self.neighbours, self.prior_strength, self._base_rates
        out = np.empty((len(queries), self._targets.shape[1]))
        for start in range(0, len(queries), CHUNK):
            block = queries[start : start + CHUNK]
            similarity = block @ self.references.T
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            hits = self._targets[nearest].sum(axis=1)
            out[start : start + CHUNK] = (hits + a * base_rates) / (k + a)
        out[~queries.any(axis=1)] = base_rates
        return RouterScores(self.models, out[:, :-1], out[:, -1])

    def params(self) -> dict[str, Any]:
        embedder = None if self.embedder is None else self.embedder.features.params()
        return {
            "neighbours": self.neighbours,
            "prior_strength": self.prior_strength,
            "embedder": embedder,
        }

    def arrays(self) -> dict[str, NDArray[Any]]:
        arrays: dict[str, NDArray[Any]] = {"references": self.references, "labels": self.labels}
        if self.embedder is not None:
            arrays |= self.embedder.features.arrays(prefix="embedder_")
            arrays["embedder_components"] = self.embedder.components
        return arrays

    @classmethod
    def from_saved(
        cls, models: tuple[str, ...], params: dict[str, Any], arrays: dict[str, NDArray[Any]]
    ) -> KnnRouter:
        embedder = None
        if params["embedder"] is not None:
            features = TfidfFeatures.from_saved(params["embedder"], arrays, prefix="embedder_")
            embedder = TextEmbedder(features, arrays["embedder_components"])
        return cls(
            models,
            arrays["references"],
            arrays["labels"],
            int(params["neighbours"]),
            float(params["prior_strength"]),
            embedder,
        )


def fit_knn_router(
    embeddings: NDArray[np.float64],
    labels: NDArray[np.bool_],
    models: Sequence[str],
    *,
    neighbours: int = 25,
    prior_strength: float = 2.0,
    embedder: TextEmbedder | None = None,
) -> KnnRouter:
    """A knn router on reference ``embeddings`` (m, d) with their ``labels`` (m, K)."""
    references = unit_rows(np.asarray(embeddings, dtype=np.float64))
    neighbours = min(neighbours, len(references))
    labels = np.asarray(labels, dtype=np.bool_)
    return KnnRouter(tuple(models), references, labels, neighbours, prior_strength, embedder)


def train_knn_router(
    outcomes: Outcomes,
    *,
    train_rows: NDArray[np.intp],
    neighbours: int = 25,
    dimensions: int = 128,
    prior_strength: float = 2.0,
    seed: int = 0,
    min_df: int = 2,
) -> KnnRouter:
    """A knn router whose references are the LSA embeddings of the ``train_rows`` questions."""
    if len(train_rows) < 2:
        raise InvalidInputError(f"need at least 2 training rows, got {len(train_rows)}")
    texts = [outcomes.questions[i] for i in train_rows]
    features = fit_tfidf(texts, min_df=min_df)
    width = max(1, min(dimensions, features.size - 1, len(texts) - 1))
    try:
        with threadpool_limits(limits=1):  # as in train_text_router: faster on a busy box
            svd = TruncatedSVD(n_components=width, random_state=seed)
            svd.fit(features.transform(texts))
    except ValueError as exc:
        raise InvalidInputError(f"cannot fit the LSA embedding: {exc}") from None
    embedder = TextEmbedder(features, svd.components_.astype(np.float32))  # halves the file
    return fit_knn_router(
        embedder.embed(texts),
        outcomes.labels[train_rows],
        outcomes.models,
        neighbours=neighbours,
        prior_strength=prior_strength,
        embedder=embedder,
    )
