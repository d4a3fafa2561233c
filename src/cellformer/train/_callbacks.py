"""Lightning callbacks."""

from __future__ import annotations

import copy
import logging
import math

import lightning.pytorch as pl

__all__ = ["RestoreBestWeights"]

logger = logging.getLogger("cellformer")


class RestoreBestWeights(pl.Callback):
    """Keep the module's weights from the best validation epoch in memory; load them at the end.

    Lighter than checkpointing to disk (scvi-tools' ``SaveCheckpoint``): the modules are small and
    only the best state is needed.

    Parameters
    ----------
    monitor
        Logged metric to watch.
    mode
        ``"min"`` or ``"max"``.
    """

    def __init__(self, monitor: str = "validation_loss", mode: str = "min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.monitor = monitor
        self.mode = mode
        self.best_score = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self._state: dict | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """Remember the weights when the monitored metric improves."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        better = score < self.best_score if self.mode == "min" else score > self.best_score
        if better:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self._state = copy.deepcopy(pl_module.module.state_dict())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """Load the best weights back into the module."""
        if self._state is not None:
            pl_module.module.load_state_dict(self._state)
            logger.info(
                "Restored the weights of epoch %d (%s = %.4f).",
                self.best_epoch,
                self.monitor,
                self.best_score,
            )
