"""Base routers: per-model scores (and ``p_abstain``) for batches of queries (docs/routers.md).

`Router`, `RouterScores` and `GivenScores` need only numpy. Everything else needs
scikit-learn (the ``router`` extra) and is imported on first use, so a worker that routes
on given scores starts without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from racer_online.routers.base import GivenScores, Router, RouterScores

if TYPE_CHECKING:
    from racer_online.routers.features import TextEmbedder, TfidfFeatures, fit_tfidf
    from racer_online.routers.files import FORMAT_VERSION, load_router, router_paths, save_router
    from racer_online.routers.knn import KnnRouter, fit_knn_router, train_knn_router
    from racer_online.routers.text import TextRouter, train_text_router
    from racer_online.routers.training import (
        OptionQuality,
        TrainingReport,
        expected_calibration_error,
        fit_router,
        held_out_quality,
        split_rows,
    )

_MODULE_OF = {
    **dict.fromkeys(("TextEmbedder", "TfidfFeatures", "fit_tfidf"), "features"),
    **dict.fromkeys(("FORMAT_VERSION", "load_router", "router_paths", "save_router"), "files"),
    **dict.fromkeys(("KnnRouter", "fit_knn_router", "train_knn_router"), "knn"),
    **dict.fromkeys(("TextRouter", "train_text_router"), "text"),
    **dict.fromkeys(
        (
            "OptionQuality",
            "TrainingReport",
            "expected_calibration_error",
            "held_out_quality",
            "fit_router",
            "split_rows",
        ),
        "training",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"racer_online.routers.{name} needs {exc.name}: pip install 'racer-online[router]'"
        ) from exc


__all__ = [
    "FORMAT_VERSION",
    "GivenScores",
    "KnnRouter",
    "OptionQuality",
    "Router",
    "RouterScores",
    "TextEmbedder",
    "TextRouter",
    "TfidfFeatures",
    "TrainingReport",
    "expected_calibration_error",
    "fit_knn_router",
    "fit_router",
    "fit_tfidf",
    "held_out_quality",
    "load_router",
    "router_paths",
    "save_router",
    "split_rows",
    "train_knn_router",
    "train_text_router",
]
