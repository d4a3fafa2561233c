"""After the weights: temperature scaling, the novelty score and the "Unknown" thresholds."""

from __future__ import annotations

import logging

import numpy as np
import torch

from cellformer import pp
from cellformer._utils import subsample

__all__ = ["CalibrationMixin"]

logger = logging.getLogger("cellformer")


class CalibrationMixin:
    """Fits the calibration of a trained model on its training and validation cells."""

    def _fit_temperature(self, val_idx: np.ndarray) -> None:
        """Temperature scaling (Guo et al. 2017): one scalar T minimising the validation NLL."""
        _, logits = self._forward_chunks(
            self.adata,
            None,
            1024,
            lambda x, extra: self.module.inference(x, **extra)["logits"],
            indices=val_idx,
        )
        labels = torch.as_tensor(self._train_labels()[val_idx], dtype=torch.long)
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
        self.module.temperature.fill_(temperature)
        logger.info(
            "Temperature scaling on %d validation cells: T = %.3f.", len(val_idx), temperature
        )

    def _fit_novelty(self, train_idx: np.ndarray, seed: int | None) -> None:
        """Fit the novelty score on (a subsample of at most ``max_reference``) training cells."""
        scorer = self.module.novelty
        train_idx = subsample(train_idx, scorer.max_reference, seed)
        blocks = [
            block
            for _, block in pp.iter_lognorm_chunks(
                self._training_matrix(),
                self.input_kind_,
                train_idx,
                library=self._library(self.adata),
            )
        ]
        scorer.fit(np.concatenate(blocks), seed=seed)
        logger.info(
            "Novelty score fit on %d training cells (%d principal axes).",
            len(train_idx),
            scorer.components.shape[1],
        )

    def _validation_summary(self, val_idx: np.ndarray) -> dict:
        """Predictive summary of training-data cells, sampled as :meth:`predict` does by default."""
        return self._predict_summary(
            self.adata, None, 1024, self.mc_samples_default, False, indices=val_idx
        )[1]

    def _fit_unknown_threshold(
        self, val_idx: np.ndarray, rate: float, summary: dict | None = None
    ) -> None:
        """Thresholds making a cell "Unknown", from quantiles on validation cells.

        Confidence below its ``rate / 2`` quantile, or novelty above its ``1 - rate / 2`` quantile
        (confidence alone, at ``rate``, without a novelty score): so at most ``rate`` of cells of
        the known types are rejected (the false-rejection rate).
        Bayesian models use :attr:`mc_samples_default` samples, as :meth:`predict` does;
        ``summary``: their predictive summary, when the caller has it.
        """
        if summary is None:
            summary = self._validation_summary(val_idx)
        scorer = self.module.novelty
        share = rate / 2 if scorer.is_fitted else rate
        threshold = float(np.quantile(summary["confidence"], share))
        self.module.unknown_threshold.fill_(threshold)
        message = f"confidence < {threshold:.3f}"
        if scorer.is_fitted:
            novelty_threshold = float(np.quantile(summary["novelty"], 1 - share))
            scorer.threshold.fill_(novelty_threshold)
            message += f" or novelty > {novelty_threshold:.2f}"
        logger.info("Unknown: %s (at most %.0f%% of validation cells).", message, 100 * rate)

    @property
    def mc_samples_default(self) -> int | None:
        """Monte-Carlo samples used by default: 30 for models with Bayesian layers, else none."""
        return 30 if self.module.bayesian_layers else None

    def _unknown(self, confidence: np.ndarray, novelty: np.ndarray) -> np.ndarray | None:
        """Cells rejected by the thresholds fit in training (``None`` when none was fit)."""
        threshold = float(self.module.unknown_threshold)
        if not np.isfinite(threshold):
            return None
        unknown = confidence < threshold
        novelty_threshold = float(self.module.novelty.threshold)
        if np.isfinite(novelty_threshold):
            unknown |= novelty > novelty_threshold
        return unknown
