"""What classifiers on published foundation-model checkpoints share (Geneformer, scGPT)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core, pp
from cellformer._errors import ParameterError
from cellformer.nn import EncoderConfig, get_encoder_config

from ._linear_path import LinearPathMixin
from .base import CellformerModel
from .base._inference import Resolved
from .base._outputs import sorted_passes

__all__ = ["CheckpointClassifier", "map_to_vocabulary"]

logger = logging.getLogger("cellformer")


def map_to_vocabulary(ids, keys) -> np.ndarray:
    """Map gene names onto a checkpoint vocabulary's keys when they are of another kind.

    Symbols, Ensembl IDs (with or without version suffixes) and orthologs are mapped with the
    pinned gene tables (:func:`cellformer.pp.map_gene_names`); a gene without one match keeps
    its name (and drops out as not in the vocabulary), as does a gene whose match another gene
    of the data already has.
    """
    keys = list(keys)
    ids = np.asarray(ids, dtype=object)
    present = pd.Index(ids).isin(keys)
    if present.all():
        return ids
    try:
        mapping = pp.map_gene_names(ids, target=keys)
    except _core.InputError as err:
        logger.warning("Gene names not mapped to the checkpoint's vocabulary: %s", err)
        return ids
    taken = set(ids[present])
    out = ids.copy()
    for i, name in zip(mapping.query_idx, mapping.names, strict=True):
        if not present[i] and name not in taken:
            out[i] = name
    if (out != ids).any():
        logger.warning("Gene names: %s", mapping.summary())
    return out


def gene_ids(adata: ad.AnnData, gene_id_key: str | None, gene_mapping: dict | None, default=None):
    """Return the names to look a checkpoint's vocabulary up with (a ``var`` column or names).

    ``default``: a ``var`` column used when present and ``gene_id_key`` is not given.
    """
    if gene_id_key is None and default is not None and default in adata.var:
        gene_id_key = default
    if gene_id_key is not None:
        if gene_id_key not in adata.var:
            raise _core.InputError(
                f"gene_id_key={gene_id_key!r} is not a column of adata.var "
                f"(columns: {list(adata.var.columns)})."
            )
        ids = adata.var[gene_id_key].astype(str).to_numpy()
    else:
        ids = np.asarray(adata.var_names.astype(str))
    if gene_mapping:
        ids = np.array([gene_mapping.get(g, g) for g in ids])
    return ids


class CheckpointClassifier(LinearPathMixin, CellformerModel):
    """Base of classifiers on a published checkpoint: a new head, the linear path beside it.

    Subclasses set ``_module_cls`` and implement :meth:`_checkpoint_inputs` (the module's
    inputs from a chunk's raw values) and :attr:`_tokens_per_cell`.
    """

    #: Before fine-tuning, the latent representation is the checkpoint's zero-shot embedding.
    _latent_is_pretrained = True
    #: Whether the checkpoint tokenises raw counts only.
    _needs_counts: bool = True
    _checkpoint_name: str = "checkpoint"

    @property
    def _warm_start_keys(self) -> tuple[str, ...] | None:
        # with the linear path the zero head gives the linear model's predictions: when no
        # epoch beats them, the zero head is restored (the encoder keeps what it learned)
        return ("head.",) if self.module.linear is not None else None

    @property
    def _tokens_per_cell(self) -> int:
        raise NotImplementedError

    def _checkpoint_inputs(self, values: torch.Tensor, library: torch.Tensor) -> dict:
        """Return the module's inputs besides ``x`` from a chunk's raw values and library sizes."""
        raise NotImplementedError

    def _counts_error(self) -> _core.InputError:
        return _core.InputError(
            f"{self._checkpoint_name} tokenises raw counts, but this AnnData holds "
            "log-normalised values: pass the layer with counts (layer='counts')."
        )

    def _chunk_inputs(self, data: Resolved, idx: np.ndarray, device) -> dict:
        if self._needs_counts and data.kind != "counts":
            raise self._counts_error()
        # the raw values of these cells on the model's genes (NaN: not measured), unnormalised
        _, values = next(
            _core.iter_lognorm_chunks(
                data.X, "lognorm", indices=idx, alignment=data.alignment, chunk_size=len(idx)
            )
        )
        if data.library is not None:
            library = np.asarray(data.library, dtype=np.float64)[idx]
        else:
            library = np.asarray(data.X[idx].sum(axis=1, dtype=np.float64)).ravel()
        return self._checkpoint_inputs(
            torch.as_tensor(values, device=device), torch.as_tensor(library, device=device)
        )

    #: Cells per forward pass at inference, sorted by length (see ``sorted_passes``).
    inference_pass_cells: int = 32

    def _apply_in_passes(self, fn, x: torch.Tensor, extra: dict) -> torch.Tensor:
        values = extra.get("values", extra.get("counts"))
        lengths = (torch.nan_to_num(values, nan=0.0) > 0).sum(1)
        return sorted_passes(fn, x, extra, lengths, self.inference_pass_cells)

    def _inference_batch_size(self, batch_size: int) -> int:
        """At most about a million tokens per pass (checkpoints take thousands per cell)."""
        return int(max(1, min(batch_size, 2**20 // self._tokens_per_cell)))

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 16,
        restore_best: bool = False,
        **kwargs,
    ):
        """Fine-tune; see :meth:`CellformerModel.train` (the new head at ``module.head_lr``).

        A fixed budget of about 400 optimiser steps by default. With the linear path, the path
        is fit first and refit on every labelled cell at the end, as for
        :class:`~cellformer.model.CellTransformer` (and the zero head is kept when training
        ends worse than it started on the validation loss).
        """
        return super().train(
            max_epochs=max_epochs, batch_size=batch_size, restore_best=restore_best, **kwargs
        )

    @staticmethod
    def _default_max_epochs(n_train: int, batch_size: int) -> int:
        """About 400 optimiser steps, between 1 and 10 epochs."""
        from cellformer._utils import epochs_for_steps

        return int(np.clip(epochs_for_steps(400, n_train, batch_size), 1, 10))

    def to_bayesian(self, prior_sigma: float = 1.0, init_sigma: float = 0.1):
        """Make the head Bayesian (posterior means = the trained weights); fine-tune afterwards."""
        self._make_head_bayesian(prior_sigma, init_sigma)
        return self


#: Options of a checkpoint classifier's new head, given as keywords (defaults: EncoderConfig's).
HEAD_OPTIONS = ("prior_sigma", "init_sigma", "kl_weight")


def head_config(head: str, linear_path: bool, options: dict) -> EncoderConfig:
    """Validate a checkpoint classifier's head options; the defaults are :class:`~cellformer.nn.EncoderConfig`'s."""
    unknown = sorted(set(options) - set(HEAD_OPTIONS))
    if unknown:
        raise ParameterError(
            f"Unknown argument(s) {unknown}; the head takes {list(HEAD_OPTIONS)} besides head "
            "and linear_path."
        )
    return get_encoder_config(head=head, linear_path=linear_path, **options)
