"""After the weights: temperature scaling, the novelty score and the "Unknown" thresholds."""

from __future__ import annotations

import logging

import numpy as np
import torch

from cellformer import _core
from cellformer._utils import subsample

from ._predict import Prediction, predictive_passes

__all__ = ["fit_novelty", "fit_temperature", "fit_unknown_threshold", "validation_summary"]

logger = logging.getLogger("cellformer")


def fit_temperature(model, val_idx: np.ndarray) -> None:
    """Temperature scaling (Guo et al. 2017): one scalar T minimising the validation NLL."""
    _, logits = model._forward_chunks(
        model.adata,
        None,
        1024,
        lambda x, extra: model.module.inference(x, **extra)["logits"],
        indices=val_idx,
    )
    labels = torch.as_tensor(model._train_labels()[val_idx], dtype=torch.long)
    logits = torch.as_tensor(logits, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp().clamp(0.05, 20.0))
    model.module.temperature.fill_(temperature)
    logger.info("Temperature scaling on %d validation cells: T = %.3f.", len(val_idx), temperature)


def fit_novelty(model, train_idx: np.ndarray, seed: int | None) -> None:
    """Fit the novelty score on (a subsample of at most ``max_reference``) training cells."""
    scorer = model.module.novelty
    train_idx = subsample(train_idx, scorer.max_reference, seed)
    blocks = [
        block
        for _, block in _core.iter_lognorm_chunks(
            model._training_matrix(),
            model.input_kind_,
            train_idx,
            library=model._library(model.adata),
        )
    ]
    scorer.fit(np.concatenate(blocks), seed=seed)
    logger.info(
        "Novelty score fit on %d training cells (%d principal axes).",
        len(train_idx),
        scorer.components.shape[1],
    )


def validation_summary(model, val_idx: np.ndarray) -> Prediction:
    """Predictive summary of training-data cells, sampled as :meth:`predict` does by default."""
    return predictive_passes(
        model, model.adata, None, 1024, model.mc_samples_default, False, indices=val_idx
    )


def fit_unknown_threshold(
    model, val_idx: np.ndarray, rate: float, summary: Prediction | None = None
) -> None:
    """Thresholds making a cell "Unknown", from quantiles on validation cells.

    Confidence below its ``rate / 2`` quantile, or novelty above its ``1 - rate / 2`` quantile
    (confidence alone, at ``rate``, without a novelty score): so at most ``rate`` of cells of
    the known types are rejected (the false-rejection rate).
    Bayesian models use :attr:`mc_samples_default` samples, as :meth:`predict` does;
    ``summary``: their predictive summary, when the caller has it.
    """
    if summary is None:
        summary = validation_summary(model, val_idx)
    scorer = model.module.novelty
    share = rate / 2 if scorer.is_fitted else rate
    threshold = float(np.quantile(summary.confidence, share))
    model.module.unknown_threshold.fill_(threshold)
    message = f"confidence < {threshold:.3f}"
    if scorer.is_fitted:
        novelty_threshold = float(np.quantile(summary.novelty, 1 - share))
        scorer.threshold.fill_(novelty_threshold)
        message += f" or novelty > {novelty_threshold:.2f}"
    logger.info("Unknown: %s (at most %.0f%% of validation cells).", message, 100 * rate)
