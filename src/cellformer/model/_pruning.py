"""Structured pruning of a trained CellTransformer (heads and FFN units), with fine-tuning.

The functions here whose first parameter is ``self`` are :class:`~cellformer.model.CellTransformer`'s
methods, kept in their own file (the class body binds them; no mixin class).
"""

from __future__ import annotations

import copy
import logging
from typing import Literal

import numpy as np
import pandas as pd
import torch

from cellformer import _core
from cellformer._errors import ParameterError

from .base._calibration import validation_summary

__all__ = ["prune", "pruning_report"]

logger = logging.getLogger("cellformer")


def _validation_macro_f1(self, val_idx: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    summary = validation_summary(self, val_idx)
    y = self._train_labels()[val_idx]
    return float(f1_score(y, summary.top, average="macro"))


def _flops_per_cell(self, n_tokens: float) -> float:
    """Multiply-adds ×2 of the encoder's linear layers and attention for ``n_tokens``."""
    d = self.module.norm.normalized_shape[0]
    flops = 0.0
    for block in self.module.encoder.layers:
        inner = block.attn.n_heads * block.attn.head_dim
        d_ff = block.ff[0].out_features
        flops += 2 * n_tokens * (d * 3 * inner + inner * d + 2 * d * d_ff)
        flops += 4 * n_tokens * n_tokens * inner  # dense scores and weighted values
    return flops


def prune(
    self,
    ffn_sparsity: float = 0.5,
    head_sparsity: float = 0.0,
    steps: int = 3,
    fine_tune_epochs: int = 3,
    tolerance: float = 0.01,
    score: Literal["magnitude", "taylor"] = "magnitude",
    validation_size: float = 0.1,
    seed: int = 0,
    lr: float | None = None,
) -> pd.DataFrame:
    """Remove FFN units and attention heads in steps, fine-tuning between steps.

    At step ``s`` of ``steps``, each block keeps its ``1 - ffn_sparsity * s / steps`` most
    important FFN units (and heads likewise, at least one), by ``score`` — ``"magnitude"`` of
    the unit's weights or first-order ``"taylor"`` ``|w · ∂L/∂w|`` over the training cells —
    then trains ``fine_tune_epochs``. Pruned units leave every tensor (see
    :func:`cellformer.nn.prune_ffn`), so the model gets smaller and faster and saves / loads
    at its new size. If the validation macro-F1 falls more than ``tolerance`` below the
    unpruned model's, the step is undone and pruning stops.

    Parameters
    ----------
    ffn_sparsity, head_sparsity
        Final share of FFN units / heads removed.
    steps
        Pruning steps.
    fine_tune_epochs
        Epochs of training after each step.
    tolerance
        Largest accepted drop of validation macro-F1.
    score
        ``"magnitude"`` or ``"taylor"``.
    validation_size, seed
        The validation split (the same as in :meth:`train` with these values).
    lr
        Learning rate of fine-tuning (default: a third of the training one).

    Returns
    -------
    The pruning report (also kept as :meth:`pruning_report`).
    """
    self._check_if_trained(warn=False)
    if not 0 <= ffn_sparsity < 1 or not 0 <= head_sparsity < 1:
        raise ParameterError("ffn_sparsity and head_sparsity must be in [0, 1).")
    labels = self._train_labels()
    labelled = np.flatnonzero(labels < self.n_classes)
    train_idx, val_idx = self._split(labelled, labels[labelled], validation_size, seed)
    val_idx = np.sort(val_idx)
    if len(val_idx) == 0:
        raise ParameterError("Pruning needs a validation split: validation_size > 0.")
    lr = lr if lr is not None else self._plan_defaults["lr"] / 3
    # after train() the linear path has seen the validation cells too: while steps are
    # judged on them it is fit on the training split only (and left there by train())
    with self._linear_path_fixed_on(train_idx):
        return _prune_steps(
            self, train_idx, val_idx, ffn_sparsity, head_sparsity, steps, fine_tune_epochs,
            tolerance, score, validation_size, seed, lr,
        )  # fmt: skip


def _prune_steps(
    self, train_idx, val_idx, ffn_sparsity, head_sparsity, steps, fine_tune_epochs,
    tolerance, score, validation_size, seed, lr,
) -> pd.DataFrame:  # fmt: skip
    """Run the pruning loop of :meth:`prune` (the linear path stays fit on ``train_idx``)."""
    from cellformer.nn import ffn_importance, head_importance, prune_ffn, prune_heads

    tokens = float((~self.tokenize(self.adata[val_idx])["padding_mask"]).sum(1).mean())
    original = self.module.layer_sizes
    base_f1 = self._validation_macro_f1(val_idx)
    rows = [_pruning_row(self, 0, base_f1, tokens)]
    for step in range(1, steps + 1):
        backup = copy.deepcopy(self.module)
        if score == "taylor":
            _accumulate_gradients(self, np.sort(train_idx))
        for block, (heads, d_ff) in zip(self.module.encoder.layers, original, strict=True):
            keep_ff = max(1, round(d_ff * (1 - ffn_sparsity * step / steps)))
            keep_heads = max(1, round(heads * (1 - head_sparsity * step / steps)))
            if keep_ff < block.ff[0].out_features:
                order = ffn_importance(block, score).argsort(descending=True)
                prune_ffn(block, order[:keep_ff])
            if keep_heads < block.attn.n_heads:
                order = head_importance(block.attn, score).argsort(descending=True)
                prune_heads(block.attn, order[:keep_heads])
        self.module.zero_grad(set_to_none=True)
        self.train(
            max_epochs=fine_tune_epochs,
            validation_size=validation_size,
            early_stopping=False,
            seed=seed,
            plan_kwargs={"lr": lr, "warmup_fraction": 0.0},
            enable_progress_bar=False,
        )
        f1 = self._validation_macro_f1(val_idx)
        row = _pruning_row(self, step, f1, tokens)
        if base_f1 - f1 > tolerance:
            row["kept"] = False
            rows.append(row)
            logger.info(
                "Pruning step %d lowered validation macro-F1 %.3f → %.3f: undone.",
                step,
                base_f1,
                f1,
            )
            self.module = backup
            break
        rows.append(row)
    _set_layer_sizes(self, self.module.layer_sizes)
    self._pruning_report = pd.DataFrame(rows)
    return self._pruning_report


def _pruning_row(self, step: int, f1: float, tokens: float) -> dict:
    sizes = self.module.layer_sizes
    return {
        "step": step,
        "heads": sum(h for h, _ in sizes),
        "ffn_units": sum(f for _, f in sizes),
        "n_params": int(sum(p.numel() for p in self.module.parameters())),
        "flops_per_cell": self._flops_per_cell(tokens),
        "validation_macro_f1": f1,
        "kept": True,
    }


def _set_layer_sizes(self, sizes: list[tuple[int, int]]) -> None:
    """Record the block sizes in the init parameters, so that ``load`` builds them."""
    self._record_init_params(layer_sizes=[list(s) for s in sizes])


def _accumulate_gradients(self, train_idx: np.ndarray, n_cells: int = 2048) -> None:
    """Gradients of the training loss on up to ``n_cells`` training cells (Taylor scores)."""
    idx = np.sort(train_idx[:n_cells])
    X = self._training_matrix()
    labels = torch.as_tensor(self._train_labels())
    self.module.zero_grad(set_to_none=True)
    self.module.eval()
    device = next(self.module.parameters()).device
    library = self._library(self.adata)
    chunks = _core.iter_lognorm_chunks(
        X, self.input_kind_, indices=idx, chunk_size=256, library=library
    )
    for chunk, block in chunks:
        x = torch.as_tensor(block, device=device)
        extra = self._extra_inputs(self._expression_adata(self.adata), chunk, device)
        logits = self.module.inference(x, **extra)["logits"]
        y = labels[chunk].to(device)
        torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()


def pruning_report(self) -> pd.DataFrame:
    """Per pruning step: heads, FFN units, parameters, FLOPs per cell, validation macro-F1."""
    report = getattr(self, "_pruning_report", None)
    if report is None:
        raise ParameterError("This model has not been pruned: call model.prune(...) first.")
    return report
