"""Classification metrics (scikit-learn), plus the lines that expose a degenerate classifier."""

from __future__ import annotations

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

from cellformer._errors import ParameterError

__all__ = [
    "EXTRA",
    "reliability_bins",
    "REPORTED",
    "SCORES",
    "calibration_metrics",
    "classification_metrics",
    "majority_baseline",
    "per_class_f1",
]

#: Scores summarised over folds by default.
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "mcc")
#: Columns shown beside the scores in every table: calibration, degenerate-classifier check, cost.
EXTRA = (
    "ece",
    "nll",
    "pred_entropy_bits",
    "n_params",
    "train_s",
    "predict_cells_per_s",
    "peak_memory_mb",
)
REPORTED = (*SCORES, *EXTRA)
#: Scores of coarse Cell Ontology answers (``cf.bench.run(label_ontology=...)``), shown in the
#: summaries when the results hold them.
ONTOLOGY_SCORES = (
    "ontology_accuracy_fine",
    "ontology_accuracy",
    "ontology_mean_depth",
    "ontology_fine_share",
)


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


def per_class_f1(y_true, y_pred) -> dict[str, float]:
    """F1 score of each true cell type (scikit-learn), as ``{cell type: F1}``."""
    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    labels = np.unique(y_true)
    scores = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {str(label): float(score) for label, score in zip(labels, scores, strict=True)}


def majority_baseline(y_train, y_test) -> dict[str, float]:
    """Scores of predicting the training majority class for every test cell."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    majority = values[np.argmax(counts)]
    return classification_metrics(y_test, np.full(len(y_test), majority))


def calibration_metrics(y_true, probs, classes, n_bins: int = 15) -> dict[str, float]:
    """Score soft predictions: expected calibration error, negative log-likelihood, Brier score.

    Parameters
    ----------
    y_true
        True labels, ``(cells,)``.
    probs
        Predicted probabilities ``(cells, classes)`` (rows sum to 1), e.g. ``predict(soft=True)``.
    classes
        The class of each column of ``probs``. Cells whose label is not among them (a held-out
        cell type) count as wrong with probability 0 for their class.
    n_bins
        Equal-width confidence bins of the ECE.

    Returns
    -------
    ``ece``: ``Σ_b (n_b / n) |accuracy_b − mean confidence_b|`` over bins of the top-class
    probability; ``nll``: mean −log p(true class) (clipped at 1e-12); ``brier``: mean over cells
    of Σ_c (p_c − 1[c = true])².
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=str)
    columns = {str(c): i for i, c in enumerate(classes)}
    truth = np.array([columns.get(y, -1) for y in y_true])
    if probs.shape != (len(y_true), len(columns)):
        raise ParameterError(
            f"probs has shape {probs.shape}; expected ({len(y_true)}, {len(columns)})."
        )
    onehot = np.zeros_like(probs)
    known = truth >= 0
    onehot[np.flatnonzero(known), truth[known]] = 1.0
    p_true = np.where(known, probs[np.arange(len(truth)), np.maximum(truth, 0)], 0.0)
    bins = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == truth, n_bins)
    return {
        "ece": bins["ece"],
        "nll": float(-np.log(np.clip(p_true, 1e-12, None)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
    }


def reliability_bins(confidence, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: number of cells, accuracy and mean confidence.

    Bins are ``(0, 1/n], (1/n, 2/n], ...``; empty bins have NaN accuracy and confidence. Also
    returns ``ece`` = ``Σ_b (n_b / n) |accuracy_b − confidence_b|``: the data of a reliability
    diagram and of the expected calibration error.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    n = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / n
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / n
    share = n / max(len(confidence), 1)
    ece = float(np.nansum(share * np.abs(accuracy - mean_conf)))
    return {"edges": edges, "n": n, "accuracy": accuracy, "confidence": mean_conf, "ece": ece}
