"""Honest benchmarking: folds, metrics, a linear reference beside every model, reports."""

from ._cv import (
    MODELS,
    SklearnLogisticRegression,
    cross_validate,
    n_parameters,
    parse_models,
    summarize,
)
from ._holdout import holdout_class
from ._metrics import (
    calibration_metrics,
    classification_metrics,
    majority_baseline,
    reliability_bins,
)
from ._report import write_report

__all__ = [
    "MODELS",
    "SklearnLogisticRegression",
    "calibration_metrics",
    "classification_metrics",
    "cross_validate",
    "holdout_class",
    "majority_baseline",
    "n_parameters",
    "parse_models",
    "reliability_bins",
    "summarize",
    "write_report",
]
