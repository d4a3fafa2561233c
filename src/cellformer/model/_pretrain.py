"""Masked-expression pretraining of a CellTransformer encoder on unlabelled cells."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import anndata as ad
import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from cellformer import _core, pp
from cellformer._errors import ParameterError
from cellformer._settings import settings
from cellformer._utils import epochs_for_steps, quiet_training, seeded
from cellformer.module import MaskedExpressionModule, TransformerModule
from cellformer.nn import ENCODER_FIELDS, EncoderConfig, get_encoder_config
from cellformer.tokenizers import get_config
from cellformer.train import ChunkedCells, PretrainingPlan

from .base._files import check_finite, legacy_torch_load, read_files, write_files

__all__ = ["PretrainedEncoder", "pretrain"]

logger = logging.getLogger("cellformer")

#: Optimiser steps of :func:`pretrain` when ``max_epochs`` is not given.
PRETRAIN_STEPS = 3000
#: Module entries that belong to the classifier, not to the pretrained encoder.
NOT_TRANSFERRED = ("head.", "class_weights", "unknown_threshold", "temperature", "novelty.")


class PretrainedEncoder:
    """A pretrained CellTransformer encoder: genes, tokenizer (with its statistics) and weights.

    Made by :func:`pretrain` (or :meth:`CellTransformer.pretrain
    <cellformer.model.CellTransformer.pretrain>`); load it into a classifier with
    :meth:`CellTransformer.from_pretrained <cellformer.model.CellTransformer.from_pretrained>`.
    """

    #: Files of a saved encoder: tensors, everything else (readable, with checksums).
    TENSORS = "encoder.safetensors"
    JSON = "encoder.json"
    #: The pickle that cellformer wrote before 0.1.0.
    LEGACY = "encoder.pt"

    def __init__(self, genes, tokenizer: dict, architecture: dict, state_dict: dict, history):
        self.genes = [str(g) for g in genes]
        self.tokenizer = tokenizer
        self.architecture = architecture
        self.state_dict = state_dict
        self.history = history

    def __repr__(self) -> str:
        arch = ", ".join(f"{k}={v!r}" for k, v in self.architecture.items() if v is not None)
        return f"PretrainedEncoder({len(self.genes)} genes, {arch})"

    def save(self, dir_path: str | Path, overwrite: bool = False) -> Path:
        """Save to ``dir_path``: ``encoder.safetensors`` (weights) and ``encoder.json``.

        The JSON file holds the genes, tokenizer, architecture and history, and the SHA-256 of
        both files; nothing in either runs code when read.
        """
        out = Path(dir_path)
        if self.is_saved(out) and not overwrite:
            raise _core.OverwriteError(
                f"{out} already holds a pretrained encoder; pass overwrite=True to replace it."
            )
        out.mkdir(parents=True, exist_ok=True)
        content = {
            "genes": self.genes,
            "tokenizer": self.tokenizer,
            "architecture": self.architecture,
            "history": self.history,
        }
        write_files(out, self.state_dict, content, stem="encoder")
        (out / self.LEGACY).unlink(missing_ok=True)
        return out / self.JSON

    @classmethod
    def is_saved(cls, dir_path: str | Path) -> bool:
        """Whether ``dir_path`` is a directory holding a saved encoder (either format)."""
        path = Path(dir_path)
        return path.is_dir() and ((path / cls.TENSORS).is_file() or (path / cls.LEGACY).is_file())

    @classmethod
    def load(cls, dir_path: str | Path, trust: bool = False) -> PretrainedEncoder:
        """Load what :meth:`save` wrote (checksums verified; no code is run).

        An ``encoder.pt`` of a release before 0.1.0 is read with ``torch.load(weights_only=True)``
        and an allow-list, or, with ``trust=True``, as the pickle it is.
        """
        path = Path(dir_path)
        if not cls.is_saved(path):
            raise _core.InputError(
                f"No pretrained encoder in {str(path)!r} (expected {cls.JSON} and {cls.TENSORS})."
            )
        if (path / cls.TENSORS).is_file():
            content, tensors = read_files(path, stem="encoder")
            encoder = cls(state_dict=tensors, **content)
        else:
            payload = legacy_torch_load(path / cls.LEGACY, trust, "a pretrained encoder")
            encoder = cls(**payload)
        check_finite(encoder.state_dict, f"The pretrained encoder in {str(path)!r}")
        return encoder

    def transferable(self, module) -> dict:
        """Return the entries of the state dict that fit ``module`` (the classifier head is not)."""
        own = module.state_dict()
        out = {}
        for key, value in self.state_dict.items():
            if key.startswith(NOT_TRANSFERRED) or key not in own:
                continue
            if own[key].shape != value.shape:
                raise ParameterError(
                    f"The pretrained {key!r} has shape {tuple(value.shape)}, the model's "
                    f"{tuple(own[key].shape)}: build the model with the pretrained architecture."
                )
            out[key] = value
        return out

    def align(self, adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
        """Return ``adata``'s cells as log-normalised values on the encoder's genes.

        Counts are log-normalised with each cell's library size over all of its genes first;
        genes the encoder knows but ``adata`` lacks are zero (coverage is logged; below 50% it is
        an error).
        """
        return self.align_to(self.genes, adata, layer)

    @staticmethod
    def align_to(genes, adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
        """``adata`` log-normalised on ``genes`` (missing ones zero; see :meth:`align`)."""
        _core.check_var_names(adata)
        kind = pp.check_expression(adata, layer)
        alignment = _core.align_genes(genes, adata.var_names)
        matrix = _core.lognorm_csr(_core.get_matrix(adata, layer), kind, alignment)
        aligned = ad.AnnData(matrix, obs=adata.obs.copy())
        aligned.var_names = list(genes)
        return aligned


def pretrain(
    adata: ad.AnnData,
    layer: str | None = None,
    tokenizer: str | dict = "default",
    encoder: str | dict | EncoderConfig | None = None,
    target: str = "auto",
    mask_prob: float = 0.15,
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
    cell_prediction: bool = True,
    max_epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    validation_size: float = 0.05,
    chunk_size: int = 4096,
    seed: int | None = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    enable_progress_bar: bool = True,
    ckpt_path: str | None = None,
    **kwargs,
) -> PretrainedEncoder:
    """Pretrain a CellTransformer encoder by masked-expression modelling on unlabelled cells.

    The tokenizer statistics (gene medians, HVGs, z-score scaler) and, with ``attention="knn"``,
    the gene graph are fit on these cells. Gene tokens are masked BERT-style (see
    :class:`~cellformer.module.MaskedExpressionModule`) and the encoder learns to predict them;
    cells are streamed in chunks (:class:`~cellformer.train.ChunkedCells`), so an AnnData opened
    with ``backed="r"`` trains in bounded memory.

    Parameters
    ----------
    adata
        Cells (labels are ignored); counts or log-normalised values in ``layer`` / ``X``.
    layer
        Layer to read.
    tokenizer, encoder
        The tokenizer and the encoder, as in :class:`~cellformer.model.CellTransformer`; the
        encoder's fields (:data:`~cellformer.nn.ENCODER_FIELDS`: ``d_model``, ``n_layers``,
        ``n_heads``, ``d_ff``, ``dropout``, ``attention_dropout``, ``attention``,
        ``attention_options``) may be given as keywords too.
    target, mask_prob, replace_prob, random_prob
        The masking (see :func:`~cellformer.module.mask_tokens`): what is hidden and predicted
        (``"expression"``, ``"gene"``, ``"both"``; ``"auto"``: expression when the tokenizer
        encodes it).
    cell_prediction
        Also predict each hidden value from the pooled cell embedding and the gene's identity
        (see :class:`~cellformer.module.MaskedExpressionModule`), so that the cell embedding a
        classifier reads is trained too.
    max_epochs, batch_size, lr, weight_decay
        Optimisation (AdamW, 5% warm-up, cosine decay). ``max_epochs=None``: about
        3,000 optimiser steps, between 10 and 200 epochs. Too few steps leave
        the encoder near its start: 1,000 mouse immune cells, 20 epochs at lr 1e-3 (300 steps)
        end at a training loss (token + cell prediction) of 3.25; 100 epochs at 1e-3 at 1.10, at
        3e-3 at 0.58.
    validation_size
        Share of cells held out to log ``validation_pretrain_loss``.
    chunk_size
        Cells read at a time.
    seed
        Seed of initialisation, masking and shuffling.
    accelerator, devices, **kwargs
        Encoder fields (above); the other keywords are passed to :class:`lightning.pytorch.Trainer` (e.g. ``strategy="ddp"``,
        ``precision="bf16-mixed"``, ``accumulate_grad_batches=4``). Under DDP each rank streams
        its own share of every chunk and losses are averaged over ranks.
    ckpt_path
        Resume from this Lightning checkpoint (write them with
        ``callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(...)]``).

    Returns
    -------
    A :class:`PretrainedEncoder`; ``history`` holds the losses per epoch.
    """
    _core.check_var_names(adata)
    kind = pp.check_expression(adata, layer)
    X = _core.get_matrix(adata, layer)
    config = get_config(tokenizer)
    network, trainer_kwargs = _pretraining_encoder(encoder, kwargs)
    architecture = {k: network.to_dict()[k] for k in ENCODER_FIELDS}
    architecture["d_ff"] = network.ff_units
    with seeded(seed):  # reproducible; the caller's random state is restored afterwards
        backbone = TransformerModule(
            n_input=adata.n_vars,
            n_labels=1,
            gene_names=adata.var_names,
            tokenizer=config,
            input_kind="lognorm",
            encoder=network,
        )
        n = adata.n_obs
        rng = np.random.default_rng(seed)
        n_val = int(round(validation_size * n)) if n > 20 else 0
        if max_epochs is None:
            max_epochs = int(
                np.clip(epochs_for_steps(PRETRAIN_STEPS, n - n_val, batch_size), 10, 200)
            )
        val_idx = np.sort(rng.choice(n, n_val, replace=False)) if n_val else np.array([], dtype=int)
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        backbone.fit_statistics(X, kind, train_idx)
        module = MaskedExpressionModule(
            backbone, target, mask_prob, replace_prob, random_prob, cell_prediction
        )
        base_seed = 0 if seed is None else seed
        train_data = ChunkedCells(X, kind, train_idx, chunk_size=chunk_size, seed=base_seed)
        loaders = {"train_dataloaders": DataLoader(train_data, batch_size=batch_size)}
        if n_val:
            val_data = ChunkedCells(X, kind, val_idx, chunk_size=chunk_size, shuffle=False)
            loaders["val_dataloaders"] = DataLoader(val_data, batch_size=batch_size)
        plan = PretrainingPlan(module, lr=lr, weight_decay=weight_decay)
        plan.datasets = (train_data, val_data) if n_val else (train_data,)
        trainer_kwargs.setdefault("logger", False)
        trainer_kwargs.setdefault("enable_checkpointing", False)
        history = _History()
        callbacks = [*trainer_kwargs.pop("callbacks", []), history]
        with quiet_training():
            trainer = pl.Trainer(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                enable_progress_bar=enable_progress_bar and settings.shows_info,
                enable_model_summary=False,
                callbacks=callbacks,
                **trainer_kwargs,
            )
            trainer.fit(plan, ckpt_path=ckpt_path, **loaders)
        state = {
            k: v.detach().cpu()
            for k, v in backbone.state_dict().items()
            if not k.startswith(NOT_TRANSFERRED)  # the classifier's parts: nothing pretrained
        }
        return PretrainedEncoder(
            adata.var_names, config.to_dict(), architecture, state, history.rows
        )


class _History(pl.Callback):
    """Collects the logged losses once per epoch."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
        self.rows.append({"epoch": trainer.current_epoch, **metrics})


def _pretraining_encoder(encoder, kwargs: dict) -> tuple[EncoderConfig, dict]:
    """Split ``kwargs`` into encoder fields and Trainer arguments; the network to pretrain.

    Only the encoder proper (:data:`~cellformer.nn.ENCODER_FIELDS`) is pretrained and saved:
    the pooling is the mean, nothing is hidden besides the masking, there is no linear path.
    """
    names = {f.name for f in dataclasses.fields(EncoderConfig)}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    network = get_encoder_config(encoder, **options)
    changed = sorted(k for k in options if k not in ENCODER_FIELDS)
    if changed:
        raise ParameterError(
            f"{changed} are not part of a pretrained encoder (only {list(ENCODER_FIELDS)} are): "
            "give them to CellTransformer.from_pretrained(...) instead."
        )
    return network.replace(pooling="mean", token_dropout=0.0, linear_path=False), kwargs
