"""Classification metrics (scikit-learn), plus the lines that expose a degenerate classifier."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

__all__ = ["EXTRA", "REPORTED", "SCORES", "classification_metrics", "majority_baseline"]

#: Scores summarised over folds by default.
SCORES = ("accuracy", "macro_f1", "mcc")
#: Columns shown beside the scores in every table: degenerate-classifier check and cost.
EXTRA = ("pred_entropy_bits", "n_params", "train_s", "predict_cells_per_s")
REPORTED = (*SCORES, *EXTRA)


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, MCC and the entropy of the predicted classes.

    The predicted-class entropy (in bits) is near zero for a model that predicts one class
    everywhere: print it beside the scores.
    """
    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    _, pred_counts = np.unique(y_pred, return_counts=True)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "pred_entropy_bits": float(entropy(pred_counts, base=2)),
    }


def majority_baseline(y_train, y_test) -> dict[str, float]:
    """Scores of predicting the training majority class for every test cell."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    majority = values[np.argmax(counts)]
    return classification_metrics(y_test, np.full(len(y_test), majority))
