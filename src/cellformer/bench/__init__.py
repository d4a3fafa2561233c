"""Honest benchmarking: splits, metrics, a linear reference beside every model, reports."""

from ._holdout import holdout_class
from ._metrics import (
    calibration_metrics,
    classification_metrics,
    majority_baseline,
    per_class_f1,
    reliability_bins,
)
from ._models import MODELS, SklearnLogisticRegression, n_parameters, parse_models
from ._report import learning_table, result_tables, write_report
from ._results import summarize
from ._run import cross_validate, learning_curve, run
from ._splits import (
    Fold,
    LeaveOneGroupOut,
    PredefinedSplit,
    StratifiedKFold,
    cross_domain,
    cross_tissue,
    make_split,
    subsample_training,
)

__all__ = [
    "MODELS",
    "Fold",
    "LeaveOneGroupOut",
    "PredefinedSplit",
    "SklearnLogisticRegression",
    "StratifiedKFold",
    "calibration_metrics",
    "classification_metrics",
    "cross_domain",
    "cross_tissue",
    "cross_validate",
    "holdout_class",
    "learning_curve",
    "learning_table",
    "result_tables",
    "majority_baseline",
    "make_split",
    "n_parameters",
    "parse_models",
    "per_class_f1",
    "reliability_bins",
    "run",
    "subsample_training",
    "summarize",
    "write_report",
]
