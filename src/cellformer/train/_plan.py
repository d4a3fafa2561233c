"""Training plans: AdamW with warm-up + cosine; classifiers log loss, accuracy and macro-F1."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["CellTypeTrainingPlan", "WarmupCosinePlan"]


def confusion_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and macro-F1 from a confusion matrix (rows: truth, columns: prediction).

    Macro-F1 averages over the classes that occur in the truth or the predictions, as
    scikit-learn's ``f1_score(average="macro")`` does.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    total = confusion.sum()
    support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    accuracy = tp.sum() / total.clamp_min(1)
    return accuracy.float(), f1[present].mean().float()


class WarmupCosinePlan(pl.LightningModule):
    """Base of cellformer's Lightning plans: AdamW with linear warm-up and cosine decay.

    scvi-tools' ``TrainingPlan`` is built around generative models (an ELBO with reconstruction
    and local KL terms, Adam with ``ReduceLROnPlateau``); cellformer's plans need an AdamW
    schedule stepped per batch, parameter groups from the module (layer-wise learning rates) and
    classification metrics, so they share this base instead.

    Parameters
    ----------
    module
        The module to train (its ``parameter_groups(lr)``, when present, gives the groups).
    lr
        Peak learning rate.
    weight_decay
        Decoupled (AdamW) weight decay; regularisation that is part of the model's objective
        belongs in the module's ``penalty`` instead.
    warmup_fraction
        Share of the optimisation steps with a linear warm-up; the rest decays on a cosine to
        ``min_lr_ratio * lr``.
    min_lr_ratio
        Final learning rate as a fraction of ``lr``.
    """

    def __init__(
        self,
        module,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
    ):
        super().__init__()
        self.module = module
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio

    def forward(self, *args, **kwargs):
        """Pass through to the module."""
        return self.module(*args, **kwargs)

    #: Optimiser steps of the whole run (set with the optimiser, once the trainer knows them).
    total_steps: int = 1

    def configure_optimizers(self):
        """AdamW with linear warm-up and cosine decay, stepped per batch."""
        groups = getattr(self.module, "parameter_groups", None)
        if groups is not None:
            params = groups(self.lr)
        else:
            params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self.total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_fraction * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class CellTypeTrainingPlan(WarmupCosinePlan):
    """Lightning plan for a :class:`~cellformer.module.ClassifierModuleBase`.

    Logs ``train_loss``, ``validation_loss``, ``validation_accuracy`` and ``validation_macro_f1``
    per epoch (the names early stopping can monitor). The validation metrics come from a
    torchmetrics confusion matrix, summed over ranks under DDP.

    Parameters
    ----------
    module, lr, weight_decay, warmup_fraction, min_lr_ratio
        See :class:`WarmupCosinePlan`.
    kl_warmup_fraction
        For modules with Bayesian layers: the KL weight rises linearly from 0 to 1 over this
        share of the optimisation steps (KL annealing), so the data term shapes the posterior
        first.
    """

    def __init__(
        self,
        module,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
        kl_warmup_fraction: float = 0.3,
    ):
        super().__init__(module, lr, weight_decay, warmup_fraction, min_lr_ratio)
        self.kl_warmup_fraction = kl_warmup_fraction
        self.val_confusion = MulticlassConfusionMatrix(num_classes=module.n_labels)

    def training_step(self, batch, batch_idx):
        """One optimisation step."""
        if hasattr(self.module, "kl_scale"):
            warmup = self.kl_warmup_fraction * self.total_steps
            self.module.kl_scale = min(1.0, (self.global_step + 1) / warmup) if warmup > 0 else 1.0
        _, _, out = self.module(batch)
        self.log("train_loss", out.loss, on_epoch=True, on_step=False,
                 batch_size=out.n_obs_minibatch, sync_dist=True)  # fmt: skip
        if getattr(self.module, "bayesian_layers", None):
            self.log("train_kl", out.kl_global_sum, on_epoch=True, on_step=False, sync_dist=True)
        return out.loss

    def validation_step(self, batch, batch_idx):
        """Log the validation loss; accumulate the confusion matrix."""
        if hasattr(self.module, "kl_scale"):
            self.module.kl_scale = 1.0  # the full objective, comparable across epochs
        _, _, out = self.module(batch)
        self.log(
            "validation_loss",
            out.loss,
            on_epoch=True,
            on_step=False,
            batch_size=out.n_obs_minibatch,
            sync_dist=True,  # the mean over every rank's cells under DDP
        )
        if out.true_labels.numel():
            self.val_confusion.update(out.logits.detach().argmax(dim=1), out.true_labels.long())

    def on_validation_epoch_end(self):
        """Accuracy and macro-F1 over the whole validation split (all ranks)."""
        confusion = self.val_confusion.compute()  # synchronised over ranks by torchmetrics
        self.val_confusion.reset()
        if confusion.sum() == 0:
            return
        accuracy, macro_f1 = confusion_scores(confusion)
        self.log("validation_accuracy", accuracy)
        self.log("validation_macro_f1", macro_f1)
