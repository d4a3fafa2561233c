"""The cell constructor (F_C).

Which genes of a cell become tokens, in which order, with which expression values and bins.
Vectorised over cells with torch, on CPU or GPU.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from cellformer._core import iter_lognorm_chunks, scaler_from_sums
from cellformer._errors import InputError, ParameterError
from cellformer._utils import subsample

from ._config import TokenizerConfig, get_config
from ._ops import (
    _column_nonzero_median,
    _float_bits,
    _highly_variable,
    _random_subset,
    _segment_starts,
)
from ._orders import ORDER
from ._paired import check_paired, paired_tokens, paired_widths
from ._parts import EXPRESSION
from ._tokens import CLS, N_SPECIAL, PAD, SPECIAL_TOKENS, Tokens

__all__ = ["N_SPECIAL", "SPECIAL_TOKENS", "Tokenizer", "Tokens"]

logger = logging.getLogger("cellformer")


class Tokenizer(nn.Module):
    """Turns log-normalised expression ``(cells, genes)`` into :class:`~cellformer.tokenizers.Tokens`.

    The statistics it needs (per-gene medians for rank value encoding, highly variable genes) are
    fit on training cells by :meth:`fit`, kept as buffers (so they are saved with a model) and
    applied unchanged to every later cell.

    Parameters
    ----------
    gene_names
        The model's genes, in its input order.
    config
        A preset name, a dict of :class:`~cellformer.tokenizers.TokenizerConfig` fields or a config.
    n_batches
        Number of batch categories, when the config has ``context=("batch",)``.

    Examples
    --------
    >>> tok = Tokenizer(["CD3E", "MS4A1", "LYZ"], "geneformer")
    >>> tok.fit(counts_matrix, kind="counts")  # doctest: +SKIP
    >>> tokens = tok.transform(counts_matrix, kind="counts")  # doctest: +SKIP
    """

    def __init__(
        self,
        gene_names,
        config: str | dict | TokenizerConfig = "default",
        n_batches: int = 0,
    ):
        super().__init__()
        self.config = get_config(config)
        self.gene_names = [str(g) for g in gene_names]
        n_genes = len(self.gene_names)
        if n_genes == 0:
            raise ParameterError("A tokenizer needs at least one gene.")
        if "batch" in self.config.context and n_batches < 1:
            raise ParameterError(
                "context=('batch',) needs batches: pass batch_key to setup_anndata."
            )
        self.n_batches = n_batches if "batch" in self.config.context else 0
        if self.config.paired:
            check_paired(self.gene_names)
        self.register_buffer("gene_mask", torch.ones(n_genes, dtype=torch.bool))
        self.register_buffer("median", torch.ones(n_genes))
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("std", torch.ones(n_genes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- vocabulary --------------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        """Genes in the model's input (before any HVG restriction)."""
        return len(self.gene_names)

    @property
    def vocab_size(self) -> int:
        """Special tokens + genes + context tokens."""
        return N_SPECIAL + self.n_genes + self.n_batches

    @property
    def vocabulary(self) -> list[str]:
        """Token strings in id order."""
        batches = [f"<batch:{i}>" for i in range(self.n_batches)]
        return [*SPECIAL_TOKENS, *self.gene_names, *batches]

    @property
    def max_tokens(self) -> int:
        """Most tokens a cell can have (prefix included)."""
        if self.config.paired:
            return self.n_prefix + 1 + sum(paired_widths(self))  # <sep>
        n = int(self.gene_mask.sum())
        if self.config.max_length is not None:
            n = min(n, self.config.max_length)
        return n + self.n_prefix

    @property
    def n_prefix(self) -> int:
        """Leading non-gene tokens."""
        return int(self.config.cls_token) + int(self.n_batches > 0)

    # -- fitting -----------------------------------------------------------------------------
    def fit(
        self,
        X,
        kind: str,
        indices: np.ndarray | None = None,
        max_cells: int = 20_000,
        seed: int = 0,
        library: np.ndarray | None = None,
    ) -> Tokenizer:
        """Fit per-gene medians of non-zero normalised expression and the HVGs on training cells.

        Parameters
        ----------
        X
            Cells × genes (the model's genes), dense, sparse or backed.
        kind
            ``"counts"`` or ``"lognorm"``.
        indices
            Training cells; all when ``None``.
        max_cells
            Statistics are computed on at most this many training cells (a seeded sample).
        seed
            Seed of that sample.
        library
            Library sizes of all rows of ``X`` (counts of a gene subset; see
            ``iter_lognorm_chunks``).
        """
        if X.shape[1] != self.n_genes:
            raise ParameterError(f"X has {X.shape[1]} genes, the tokenizer {self.n_genes}.")
        if indices is None:
            indices = np.arange(X.shape[0])
        indices = np.asarray(indices)
        if len(indices) == 0:
            raise ParameterError("Cannot fit a tokenizer on zero cells.")
        indices = np.sort(subsample(indices, max_cells, seed))
        chunks = iter_lognorm_chunks(X, kind, indices, sparse=True, library=library)
        lognorm = sp.vstack([sp.csr_matrix(b) for _, b in chunks]).tocsc()
        self.median.copy_(torch.as_tensor(_column_nonzero_median(lognorm), dtype=torch.float32))
        values = lognorm.astype(np.float64)
        mean, std = scaler_from_sums(
            np.asarray(values.sum(axis=0)).ravel(),
            np.asarray(values.multiply(values).sum(axis=0)).ravel(),
            values.shape[0],
        )
        self.mean.copy_(torch.as_tensor(mean))
        self.std.copy_(torch.as_tensor(std))
        if self.config.n_hvg is not None and self.config.n_hvg < self.n_genes:
            self.gene_mask.copy_(
                torch.as_tensor(_highly_variable(lognorm.tocsr(), self.config.n_hvg))
            )
        else:
            self.gene_mask.fill_(True)
        self.fitted.fill_(True)
        return self

    # -- tokenising --------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        pad_to: int | None = None,
        generator: torch.Generator | None = None,
        subsample: int | None = None,
    ) -> Tokens:
        """Tokenise log-normalised expression ``x`` ``(cells, genes)``.

        Parameters
        ----------
        x
            Log-normalised values in the model's gene order; NaN marks a gene the cell's data
            did not measure (no token).
        batch
            Batch codes ``(cells,)`` when the config has batch context tokens.
        pad_to
            Pad the gene tokens to this length (default: the longest cell in ``x``).
        generator
            Random source for ``order="random"`` and ``subsample``.
        subsample
            Give a cell with more candidate tokens than this a random subset of them first (the
            config's ``train_max_length``, applied by the model while training).
        """
        n_cells, n_genes = x.shape
        if n_genes != self.n_genes:
            raise ParameterError(f"Expected {self.n_genes} genes, got {n_genes}.")
        if self.config.paired:
            return paired_tokens(self, x, batch, generator, subsample, pad_to)
        cfg = self.config
        # genes a query did not measure (NaN) get no token, whatever the config
        unmeasured = torch.isnan(x)
        has_unmeasured = bool(unmeasured.any())
        if has_unmeasured:
            x = x.masked_fill(unmeasured, 0.0)
        if (
            not cfg.drop_zeros
            and EXPRESSION[cfg.expression].dense_bins
            and self._every_gene_fits
            and (subsample is None or subsample >= n_genes)
        ):
            # every gene is a token in gene order (scBERT): no selection at all
            ids = (torch.arange(n_genes, device=x.device) + N_SPECIAL).expand(n_cells, -1)
            if has_unmeasured:
                ids = ids.masked_fill(unmeasured, PAD)  # padding: attended by nothing
            bins = EXPRESSION[cfg.expression].bins(self, x)
            if cfg.value_scale == "zscore":
                x = (x - self.mean) / self.std
            return self._finish(ids, x, bins, batch, pad_to)
        present = (x > 0) if cfg.drop_zeros else ~unmeasured
        if not self._all_in_vocabulary:
            present &= self.gene_mask
        rows, cols = present.nonzero(as_tuple=True)
        vals = x[rows, cols]
        if subsample is not None:
            rows, cols, vals = _random_subset(rows, n_cells, subsample, generator, cols, vals)
        return self.from_entries(rows, cols, vals, n_cells, batch, pad_to, generator)

    @property
    def _all_in_vocabulary(self) -> bool:
        return bool(self.gene_mask.all())

    @property
    def _every_gene_fits(self) -> bool:
        n = self.n_genes
        return self._all_in_vocabulary and (
            self.config.max_length is None or self.config.max_length >= n
        )

    def from_entries(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        vals: torch.Tensor,
        n_cells: int,
        batch: torch.Tensor | None = None,
        pad_to: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tokens:
        """Tokenise cells given as candidate-token entries (a sparse matrix's non-zeros).

        Parameters
        ----------
        rows, cols, vals
            Cell index, gene index and log-normalised value of every candidate token, sorted by
            cell (genes outside the vocabulary already removed; zeros only when the config keeps
            them).
        n_cells
            Number of cells.
        batch, pad_to, generator
            See :meth:`forward`.
        """
        cfg = self.config
        order = ORDER[cfg.order]
        if order.needs_fit and not bool(self.fitted):
            raise InputError(
                f"The {cfg.order!r} token order needs statistics of the training cells (rank "
                "value encoding: gene medians): call fit() first."
            )
        device = vals.device
        counts = torch.bincount(rows, minlength=n_cells)
        longest = int(counts.max()) if rows.numel() else 0
        length = longest if cfg.max_length is None else min(longest, cfg.max_length)
        truncating = longest > length
        bins = EXPRESSION[cfg.expression].bins(self, vals, rows, counts)
        starts = _segment_starts(counts)
        pos = torch.arange(rows.numel(), device=device) - starts[rows]
        if order.gene_order and not truncating:  # entries are already in gene order
            return self._scatter(rows, pos, cols, vals, bins, n_cells, length, batch, pad_to)
        key = order.key(self, vals, cols, generator)
        # one row of packed (key, gene) per cell, sorted: descending key, ties in gene order
        gene_bits = max(int(self.n_genes - 1).bit_length(), 1)
        bits = _float_bits(key)
        if order.coarse:  # keep 15 of 23 mantissa bits: values within ~3e-5 of each other tie
            bits = bits & ~0xFF
        packed = ((0x7FFFFFFF - bits) << gene_bits) | cols
        grid = torch.full((n_cells, longest), torch.iinfo(torch.int64).max, device=device)
        grid[rows, pos] = packed
        entry = torch.zeros((n_cells, longest), dtype=torch.long, device=device)
        entry[rows, pos] = torch.arange(rows.numel(), device=device)
        if truncating:
            top, where = torch.topk(grid, length, dim=1, largest=False, sorted=True)
        else:
            top, where = torch.sort(grid, dim=1)
        valid = top != torch.iinfo(torch.int64).max
        picked = entry.gather(1, where)  # entry index of each token, cell by cell
        if order.gene_order:  # put the kept (highest-key) genes back in gene order
            gene = torch.where(valid, top & ((1 << gene_bits) - 1), self.n_genes)
            order = torch.sort(gene, dim=1).indices
            picked, valid = picked.gather(1, order), valid.gather(1, order)
        picked = picked[valid]
        pos = valid.nonzero(as_tuple=True)[1]
        bins = None if bins is None else bins[picked]
        return self._scatter(
            rows[picked], pos, cols[picked], vals[picked], bins, n_cells, length, batch, pad_to
        )

    def _scatter(self, rows, pos, cols, vals, bins, n_cells, length, batch, pad_to) -> Tokens:
        device = cols.device
        ids = torch.full((n_cells, length), PAD, dtype=torch.long, device=device)
        ids[rows, pos] = cols + N_SPECIAL
        if self.config.value_scale == "zscore":
            vals = (vals - self.mean[cols]) / self.std[cols]
        values = torch.zeros((n_cells, length), dtype=vals.dtype, device=device)
        values[rows, pos] = vals
        if bins is not None:
            dense_bins = torch.zeros((n_cells, length), dtype=torch.long, device=device)
            dense_bins[rows, pos] = bins
            bins = dense_bins
        return self._finish(ids, values, bins, batch, pad_to)

    def _log_bins(self, values: torch.Tensor) -> torch.Tensor:
        base = self.config.bin_log_base
        if base is not None:  # log_b(1 + x) = ln(1 + x) / ln(b)
            values = values / math.log(base)
        return values.floor().clamp(0, self.config.n_bins - 1).long()

    def _finish(self, ids, values, bins, batch, pad_to) -> Tokens:
        """Pad to ``pad_to`` and prepend ``<cls>`` and context tokens."""
        n_cells, length = ids.shape
        if pad_to is not None and pad_to > length:
            extra = pad_to - length
            ids = nn.functional.pad(ids, (0, extra), value=PAD)
            values = nn.functional.pad(values, (0, extra))
            bins = None if bins is None else nn.functional.pad(bins, (0, extra))
        prefix = []
        if self.config.cls_token:
            prefix.append(torch.full((n_cells, 1), CLS, dtype=ids.dtype, device=ids.device))
        if self.n_batches:
            if batch is None:
                raise ParameterError("This tokenizer adds batch tokens: pass batch codes.")
            code = batch.view(-1, 1).long().clamp(0, self.n_batches - 1).to(ids.device)
            prefix.append(N_SPECIAL + self.n_genes + code)
        if prefix:
            ids = torch.cat([*prefix, ids], dim=1)
            zeros = torch.zeros(n_cells, len(prefix), dtype=values.dtype, device=values.device)
            values = torch.cat([zeros, values], dim=1)
            if bins is not None:
                bins = torch.cat([zeros.long(), bins], dim=1)
        return Tokens(ids, values, bins, ids == PAD, len(prefix))

    @torch.inference_mode()
    def transform(
        self,
        X,
        kind: str = "lognorm",
        batch: np.ndarray | None = None,
        chunk_size: int = 4096,
        alignment=None,
        library: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Tokenise a whole matrix (dense, sparse or backed), in chunks of cells.

        Parameters
        ----------
        X
            Cells × genes, in the tokenizer's gene order unless ``alignment`` is given.
        kind
            ``"counts"`` or ``"lognorm"``.
        batch
            Batch codes per cell (for batch context tokens).
        chunk_size
            Cells per chunk.
        alignment
            A ``GeneAlignment`` from ``X``'s genes to the tokenizer's.
        library
            Library sizes of the rows of ``X`` (counts of a gene subset).

        Returns
        -------
        Dict of numpy arrays ``ids``, ``values``, ``padding_mask`` (and ``bins``), all padded
        to :attr:`max_tokens`.
        """
        pad_to = self.max_tokens - self.n_prefix
        parts = []
        # drop-zeros configs only need the non-zeros: keep sparse input sparse
        sparse = self.config.drop_zeros
        chunks = iter_lognorm_chunks(X, kind, None, alignment, chunk_size, sparse, library=library)
        for idx, block in chunks:
            b = None if batch is None else torch.as_tensor(np.asarray(batch)[idx])
            if self.config.paired and isinstance(block, sp.csr_matrix):
                block = block.toarray()  # each half is tokenised on its own, from dense rows
            if isinstance(block, sp.csr_matrix):  # drop-zeros configs: only non-zeros matter
                tokens = self._from_csr(block, batch=b, pad_to=pad_to)
            else:
                tokens = self(torch.from_numpy(block), batch=b, pad_to=pad_to)
            parts.append(tokens.numpy())
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _from_csr(self, block: sp.csr_matrix, batch=None, pad_to=None) -> Tokens:
        block.sum_duplicates()
        block.sort_indices()
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        keep = block.data > 0
        if not self._all_in_vocabulary:
            keep &= self.gene_mask.cpu().numpy()[block.indices]
        return self.from_entries(
            torch.from_numpy(rows[keep]),
            torch.from_numpy(block.indices[keep].astype(np.int64)),
            torch.from_numpy(block.data[keep].astype(np.float32)),
            block.shape[0],
            batch=batch,
            pad_to=pad_to,
        )

    def extra_repr(self) -> str:
        return f"n_genes={self.n_genes}, config={self.config}"
