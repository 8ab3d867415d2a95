"""TF-IDF text features (and an LSA embedding of them) saved as plain arrays, rebuilt exactly.

Fitting uses scikit-learn's `TfidfVectorizer` (word 1-2 grams, sublinear tf, smooth idf,
L2 norm); transforming uses a `CountVectorizer` on the saved vocabulary and applies the
same weighting by hand, so a loaded router needs nothing but the vocabulary and the idf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.preprocessing import normalize

from racer_online.errors import InvalidInputError

NGRAM_RANGE = (1, 2)


@dataclass(frozen=True)
class TfidfFeatures:
    """A fitted TF-IDF map from texts to sparse rows of length ``V``.

    Attributes
    ----------
    terms : ndarray of str, shape (V,)
        The vocabulary; column ``j`` counts ``terms[j]``.
    idf : ndarray of float64, shape (V,)
        Inverse document frequency of each term.
    ngram_range : tuple of int
        Smallest and largest word n-gram.
    """

    terms: NDArray[np.str_]
    idf: NDArray[np.float64]
    ngram_range: tuple[int, int] = NGRAM_RANGE

    def __post_init__(self) -> None:
        if self.terms.ndim != 1 or self.idf.shape != self.terms.shape:
            raise InvalidInputError(
                f"TF-IDF arrays disagree: {self.terms.shape[0]} terms, idf of shape "
                f"{self.idf.shape}"
            )

    @property
    def size(self) -> int:
        return int(self.terms.shape[0])

    @cached_property
    def _counter(self) -> CountVectorizer:
        vocabulary = {term: j for j, term in enumerate(self.terms.tolist())}
        if len(vocabulary) != self.size:
            raise InvalidInputError("the TF-IDF vocabulary repeats a term")
        return CountVectorizer(
            vocabulary=vocabulary, ngram_range=self.ngram_range, dtype=np.float64
        )

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows of ``texts``, shape (n, V), each of unit L2 norm (or zero)."""
        if not texts:
            return sp.csr_matrix((0, self.size), dtype=np.float64)
        counts = sp.csr_matrix(self._counter.transform(list(texts)), dtype=np.float64)
        np.log(counts.data, out=counts.data)  # sublinear tf: 1 + log(count)
        counts.data += 1.0
        counts.data *= self.idf[counts.indices]
        return sp.csr_matrix(normalize(counts, norm="l2", copy=False))

    def params(self) -> dict[str, Any]:
        """The JSON part of the saved form."""
        return {"ngram_range": list(self.ngram_range), "vocabulary_size": self.size}

    def arrays(self, prefix: str = "") -> dict[str, NDArray[Any]]:
        """The array part of the saved form."""
        return {f"{prefix}terms": self.terms, f"{prefix}idf": self.idf}

    @classmethod
    def from_saved(
        cls, params: dict[str, Any], arrays: dict[str, NDArray[Any]], prefix: str = ""
    ) -> TfidfFeatures:
        low, high = params["ngram_range"]
        features = cls(arrays[f"{prefix}terms"], arrays[f"{prefix}idf"], (int(low), int(high)))
        if features.size != params["vocabulary_size"]:
            raise InvalidInputError(
                f"the vocabulary holds {features.size} terms, the header says "
                f"{params['vocabulary_size']}"
            )
        return features


def fit_tfidf(texts: Sequence[str], *, min_df: int = 2) -> TfidfFeatures:
    """Vocabulary and idf of the terms found in at least ``min_df`` of ``texts``."""
    vectorizer = TfidfVectorizer(ngram_range=NGRAM_RANGE, min_df=min_df, sublinear_tf=True)
    try:
        vectorizer.fit(list(texts))
    except ValueError as exc:  # e.g. "empty vocabulary" on a tiny training set
        raise InvalidInputError(f"cannot fit TF-IDF features: {exc}") from None
    terms = vectorizer.get_feature_names_out()
    return TfidfFeatures(np.asarray(terms, dtype=np.str_), vectorizer.idf_.astype(np.float64))


@dataclass(frozen=True)
class TextEmbedder:
    """Text -> unit vectors of length ``d``: TF-IDF (n, V) times ``components.T`` (V, d)."""

    features: TfidfFeatures
    components: NDArray[np.floating[Any]]  # (d, V); float32 is enough for LSA

    def __post_init__(self) -> None:
        if self.components.ndim != 2 or self.components.shape[1] != self.features.size:
            raise InvalidInputError(
                f"embedder components have shape {self.components.shape}; expected "
                f"(d, {self.features.size})"
            )

    def embed(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """Embeddings of ``texts``, shape (n, d), unit norm (zero for texts of unseen words)."""
        return unit_rows(np.asarray(self.features.transform(texts) @ self.components.T))


def unit_rows(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows of ``matrix`` (n, d) scaled to unit L2 norm; zero rows stay zero."""
    if matrix.ndim != 2:
        raise InvalidInputError(f"embeddings must be a 2-d array, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise InvalidInputError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.zeros_like(matrix)
    np.divide(matrix, norms, out=unit, where=norms > 0)
    return unit
