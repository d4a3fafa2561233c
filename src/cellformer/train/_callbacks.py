"""Lightning callbacks."""

from __future__ import annotations

import copy
import logging
import math

import lightning.pytorch as pl
import torch

from cellformer._errors import ParameterError

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
    initial
        Also score the weights *before* training (``validation_loss`` only): a model that starts
        from a good solution (a warm-started linear path) keeps it if no epoch beats it.
    initial_keys
        When the starting weights win, restore only the state-dict entries starting with one of
        these prefixes (e.g. ``("head.",)``: a zero head gives the starting predictions whatever
        the encoder, which keeps what it learned); ``None`` restores everything.
    last_only
        With ``initial``: compare only the starting weights with the last epoch's, and go back
        to the starting ones only when the last epoch is worse (or diverged). A fixed training
        budget keeps its end point unless it lost to where it started.
    """

    def __init__(
        self,
        monitor: str = "validation_loss",
        mode: str = "min",
        initial: bool = False,
        initial_keys: tuple[str, ...] | None = None,
        last_only: bool = False,
    ):
        super().__init__()
        if mode not in ("min", "max"):
            raise ParameterError(f"mode must be 'min' or 'max', got {mode!r}.")
        if initial and monitor != "validation_loss":
            raise ParameterError("initial=True scores the validation loss; monitor it.")
        self.monitor = monitor
        self.mode = mode
        self.initial = initial
        self.initial_keys = initial_keys
        if last_only and not initial:
            raise ParameterError(
                "last_only compares the last epoch with the start: set initial=True."
            )
        self.last_only = last_only
        self.best_score = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self._state: dict | None = None
        self._last: tuple[float, int] | None = None  # last_only: the last epoch's score

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """With ``initial``, the validation loss of the starting weights is the first best."""
        loaders = trainer.val_dataloaders
        if not self.initial or loaders is None:
            return
        module = pl_module.module
        was_training = module.training
        module.eval()
        if hasattr(module, "kl_scale"):
            module.kl_scale = 1.0  # as in validation_step
        total, n = 0.0, 0
        with torch.no_grad():
            for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
                for batch in loader:
                    batch = trainer.strategy.batch_to_device(batch)
                    _, _, out = module(batch)
                    total += float(out.loss) * out.n_obs_minibatch
                    n += out.n_obs_minibatch
        module.train(was_training)
        # under DDP each rank scored its own share: sum over ranks, so that all decide alike
        sums = torch.tensor([total, n], dtype=torch.float64, device=pl_module.device)
        total, n = (float(v) for v in trainer.strategy.reduce(sums, reduce_op="sum"))
        if n:
            self.best_score = total / n
            self.best_epoch = -1
            self._state = copy.deepcopy(module.state_dict())

    def _better(self, score: float, than: float) -> bool:
        return score < than if self.mode == "min" else score > than

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """Remember the weights when the monitored metric improves."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.last_only:  # only the end point competes with the start: no copies
            self._last = (score, trainer.current_epoch)
            return
        if self._better(score, self.best_score):
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self._state = copy.deepcopy(pl_module.module.state_dict())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """Load the best weights back into the module."""
        if self._state is not None:
            # weights that diverged are not kept (buffers such as thresholds may be NaN)
            finite = all(torch.isfinite(p).all() for p in pl_module.module.parameters())
            if self.last_only and self._last is not None and finite:
                score, epoch = self._last
                if score == self.best_score or self._better(score, self.best_score):  # NaN: no
                    self.best_score, self.best_epoch = score, epoch
                    return
            state = self._state
            current = pl_module.module.state_dict()
            if self.best_epoch == -1 and self.initial_keys is not None and finite:
                state = dict(current)
                state.update(
                    {k: v for k, v in self._state.items() if k.startswith(self.initial_keys)}
                )
            pl_module.module.load_state_dict(state)
            logger.debug(
                "Restored the weights of epoch %d (%s = %.4f; -1: before training).",
                self.best_epoch,
                self.monitor,
                self.best_score,
            )
