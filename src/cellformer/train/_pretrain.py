"""Lightning plan for masked-expression pretraining."""

from __future__ import annotations

from ._plan import WarmupCosinePlan

__all__ = ["PretrainingPlan"]


class PretrainingPlan(WarmupCosinePlan):
    """Train a :class:`~cellformer.module.MaskedExpressionModule` (AdamW, warm-up + cosine).

    Logs ``pretrain_loss`` per epoch (and ``validation_pretrain_loss`` with validation data);
    the data are batches of log-normalised cells, e.g. from
    :class:`~cellformer.train.ChunkedCells`.
    """

    #: Streamed datasets to shard across ranks (set by :func:`cellformer.model.pretrain`).
    datasets: tuple = ()

    def setup(self, stage: str) -> None:
        """Give each rank its share of streamed cells (before the step count is estimated)."""
        for dataset in self.datasets:
            dataset.set_rank(self.global_rank, self.trainer.world_size)

    def training_step(self, batch, batch_idx):
        """One optimisation step on a batch of cells."""
        out = self.module(batch)
        sync = self.trainer.world_size > 1  # mean over ranks
        self.log(
            "pretrain_loss",
            out["loss"],
            on_epoch=True,
            on_step=False,
            batch_size=len(batch),
            sync_dist=sync,
        )
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        """Masked-token loss of held-out cells."""
        out = self.module(batch)
        sync = self.trainer.world_size > 1
        self.log(
            "validation_pretrain_loss",
            out["loss"],
            on_epoch=True,
            batch_size=len(batch),
            sync_dist=sync,
        )

    def on_train_epoch_start(self):
        """Reseed the chunk shuffling of streamed data for this epoch."""
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)
