"""The base-router interface: per-model scores (and ``p_abstain``) for a batch of queries.

Every router turns a batch of `QueryMessage` into one `RouterScores`. `GivenScores` reads
the scores the queries carry; `TextRouter` and `KnnRouter` compute them from the text or
the embedding. RACER only needs the numbers (docs/method.md section 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from racer_online.core.scoring import check_unit_interval
from racer_online.errors import InvalidInputError
from racer_online.messages import QueryMessage


@dataclass(frozen=True)
class RouterScores:
    """Scores of a batch of ``n`` queries for ``K`` models.

    Attributes
    ----------
    models : tuple of str, length K
        Model names, in the order of the score columns.
    scores : ndarray of float64, shape (n, K)
        ``scores[i, k]`` in [0, 1]: the estimate that model ``k`` answers query ``i``.
    p_abstain : ndarray of float64, shape (n,), or None
        The router's own estimate that no model answers query ``i``; None when it has none
        (RACER then uses ``prod_k (1 - p_k)``).
    """

    models: tuple[str, ...]
    scores: NDArray[np.float64]
    p_abstain: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n = self.scores.shape[0] if self.scores.ndim == 2 else -1
        if self.scores.shape != (n, len(self.models)):
            raise InvalidInputError(
                f"router scores have shape {self.scores.shape}; expected (n, {len(self.models)})"
            )
        check_unit_interval("router scores", self.scores)
        if self.p_abstain is not None:
            if self.p_abstain.shape != (n,):
                raise InvalidInputError(
                    f"p_abstain has shape {self.p_abstain.shape}; expected ({n},)"
                )
            check_unit_interval("p_abstain", self.p_abstain)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, models: Sequence[str]) -> RouterScores:
        """The same scores with the columns of ``models``, in that order (a scope's catalogue)."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise InvalidInputError(
                f"the router has no model {missing[0]!r} (it knows {', '.join(self.models)})"
            )
        columns = [self.models.index(m) for m in models]
        return RouterScores(tuple(models), self.scores[:, columns], self.p_abstain)

    def as_dicts(self) -> list[dict[str, float]]:
        """One ``{model: score}`` per query, the shape `QueryMessage.scores` takes."""
        return [dict(zip(self.models, row, strict=True)) for row in self.scores.tolist()]


@runtime_checkable
class Router(Protocol):
    """Anything that scores a batch of queries for a fixed list of models."""

    @property
    def models(self) -> tuple[str, ...]:
        """The models scored, in column order."""
        ...

    def input_problem(self, query: QueryMessage) -> str | None:
        """Why this router cannot score ``query`` (one line), or None if it can.

        Lets a worker reject one query instead of failing its whole batch in `score`.
        """
        ...

    def score(self, queries: Sequence[QueryMessage]) -> RouterScores:
        """Scores of ``queries``; raises `InvalidInputError` if one cannot be scored."""
        ...


@dataclass(frozen=True)
class GivenScores:
    """The scores the queries carry themselves (the default router).

    A query whose ``p_abstain`` is missing, in a batch where some query has one, gets
    ``prod_k (1 - p_k)`` (docs/method.md section 2); if no query has one, ``p_abstain``
    is None.
    """

    models: tuple[str, ...]

    def input_problem(self, query: QueryMessage) -> str | None:
        if query.scores is None:
            return f"query {query.query_id!r} carries no scores"
        missing = [m for m in self.models if m not in query.scores]
        if missing:
            return f"query {query.query_id!r} has no score for model {missing[0]!r}"
        unknown = sorted(set(query.scores) - set(self.models))
        if unknown:
            return f"query {query.query_id!r} scores unknown model {unknown[0]!r}"
        return None

    def score(self, queries: Sequence[QueryMessage]) -> RouterScores:
        raise_first_problem(self, queries)
        scores = np.array(
            [[q.scores[m] for m in self.models] for q in queries if q.scores is not None],
            dtype=np.float64,
        ).reshape(len(queries), len(self.models))
        given = np.array([np.nan if q.p_abstain is None else q.p_abstain for q in queries])
        p_abstain = None
        if not np.isnan(given).all():
            p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
        return RouterScores(self.models, scores, p_abstain)


def raise_first_problem(router: Router, queries: Sequence[QueryMessage]) -> None:
    """Raise `InvalidInputError` naming the first query ``router`` cannot score."""
    problems = [p for p in map(router.input_problem, queries) if p is not None]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidInputError(problems[0] + more)
