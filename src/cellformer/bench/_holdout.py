"""Unknown-cell detection: hold a cell type out of training and see if its cells are flagged."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from cellformer import _core, pp
from cellformer._utils import quiet_training

from ._metrics import calibration_metrics, classification_metrics
from ._models import MODELS, SklearnLogisticRegression, parse_models, predict_probabilities

__all__ = ["holdout_class"]

logger = logging.getLogger("cellformer")


def _uncertainty(
    model, test: ad.AnnData, layer, predict_kwargs: dict
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Probabilities and uncertainty scores (higher = more likely unknown) of a fitted model."""
    if isinstance(model, SklearnLogisticRegression):
        probs = predict_probabilities(model, test, layer)
        p = probs.to_numpy()
        entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(1)
        return probs, {"1 - confidence": 1 - p.max(1), "entropy": entropy}
    test = test.copy()  # predict writes the scores to obs
    probs = predict_probabilities(model, test, layer, key_prefix="cellformer", **predict_kwargs)
    scores = {
        "1 - confidence": 1 - test.obs["cellformer_confidence"].to_numpy(),
        "entropy": test.obs["cellformer_entropy"].to_numpy(),
    }
    for key in ("mutual_info", "novelty"):
        if f"cellformer_{key}" in test.obs:
            scores[key] = test.obs[f"cellformer_{key}"].to_numpy()
    return probs, scores


def holdout_class(
    adata: ad.AnnData,
    labels_key: str,
    held_out: str,
    models: dict[str, dict] | list[str] | None = None,
    layer: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Train without one cell type; score known-type accuracy, calibration and unknown detection.

    The cells of ``held_out`` never reach training. The others are split (stratified) into
    training and test cells; the test set is those test cells plus every held-out cell. Each model
    fits its preprocessing on its training cells only.

    A model config may hold ``"predict"``: keyword arguments of ``predict`` (e.g.
    ``{"mc_dropout": True, "mc_samples": 20}``).

    Returns
    -------
    One row per model × uncertainty score: ``macro_f1``, ``accuracy``, ``ece``, ``nll`` on the
    known-type test cells, and ``auroc``: how well the score separates held-out cells from
    known-type test cells (0.5 = chance).
    """
    pp.validate_anndata(adata, layer, labels_key)
    y = adata.obs[labels_key].astype(str).to_numpy()
    if held_out not in set(y):
        raise _core.InputError(
            f"Cell type {held_out!r} is not in obs[{labels_key!r}]; choose from {sorted(set(y))}."
        )
    known = np.flatnonzero(y != held_out)
    train_idx, test_known = train_test_split(
        known, test_size=test_size, random_state=seed, stratify=y[known]
    )
    test_idx = np.concatenate([np.sort(test_known), np.flatnonzero(y == held_out)])
    is_unknown = y[test_idx] == held_out
    train = adata[np.sort(train_idx)].copy()
    train.obs[labels_key] = train.obs[labels_key].astype(str).astype("category")
    test = adata[test_idx].copy()
    rows = []
    for name, config in parse_models(models).items():
        config = dict(config)
        fit = MODELS[config.pop("model")]
        predict_kwargs = config.pop("predict", {})
        with quiet_training():
            model = fit(train.copy(), labels_key, layer, seed, config)
        probs, scores = _uncertainty(model, test, layer, predict_kwargs)
        p_known = probs.to_numpy()[~is_unknown]
        pred = probs.columns.to_numpy(dtype=str)[p_known.argmax(1)]
        y_known = y[test_idx][~is_unknown]
        base = {
            "model": name,
            "held_out": held_out,
            "n_unknown": int(is_unknown.sum()),
            **classification_metrics(y_known, pred),
            **calibration_metrics(y_known, p_known, probs.columns),
        }
        for score_name, score in scores.items():
            rows.append({**base, "score": score_name, "auroc": roc_auc_score(is_unknown, score)})
    return pd.DataFrame(rows)
