"""Vectorised building blocks of the tokenizer: per-cell selection, sort keys, bins, statistics."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def _segment_starts(counts: torch.Tensor) -> torch.Tensor:
    """Offset of each cell's first entry in entries sorted by cell (``counts`` per cell)."""
    return torch.cumsum(counts, 0) - counts


def _random_subset(rows, n_cells, keep, generator, *columns):
    """At most ``keep`` random entries per cell of entries sorted by cell (order kept)."""
    counts = torch.bincount(rows, minlength=n_cells)
    if not rows.numel() or int(counts.max()) <= keep:
        return (rows, *columns)
    noise = torch.rand(rows.shape, generator=generator, device=rows.device, dtype=torch.float64)
    shuffled = torch.argsort(rows.double() + noise)  # cell by cell, random order within a cell
    starts = _segment_starts(counts)
    rank = torch.empty_like(rows)
    rank[shuffled] = torch.arange(rows.numel(), device=rows.device) - starts[rows[shuffled]]
    chosen = rank < keep
    return (rows[chosen], *(c[chosen] for c in columns))


def _float_bits(key: torch.Tensor) -> torch.Tensor:
    """Integers with the same order as the non-negative float32 values ``key``."""
    return key.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def _quantile_bins(
    rows: torch.Tensor, vals: torch.Tensor, counts: torch.Tensor, n_bins: int
) -> torch.Tensor:
    """Compute scGPT-style per-cell quantile bins of the entries.

    ``1 + floor(r * (n_bins - 1) / n)`` with ``r`` the number of the cell's non-zero values
    strictly below the entry's value and ``n`` their number; 0 for zeros.
    """
    bins = torch.zeros_like(rows)
    nonzero = vals > 0
    r, v = rows[nonzero], vals[nonzero]
    if r.numel() == 0:
        return bins
    order = torch.sort((r << 31) | _float_bits(v)).indices  # by cell, then value (>= 0)
    rs, vs = r[order], v[order]
    idx = torch.arange(rs.numel(), device=rs.device)
    new_group = torch.ones_like(rs, dtype=torch.bool)
    new_group[1:] = (rs[1:] != rs[:-1]) | (vs[1:] != vs[:-1])
    first = torch.cummax(torch.where(new_group, idx, 0), dim=0).values
    n_nonzero = torch.bincount(r, minlength=counts.numel())
    starts = _segment_starts(n_nonzero)
    smaller = first - starts[rs]
    sorted_bins = 1 + torch.div(smaller * (n_bins - 1), n_nonzero[rs], rounding_mode="floor")
    nz_bins = torch.empty_like(sorted_bins)
    nz_bins[order] = sorted_bins
    bins[nonzero] = nz_bins
    return bins


def _column_nonzero_median(X: sp.csc_matrix) -> np.ndarray:
    """Compute each column's median non-zero value of ``log1p``-normalised data.

    On the normalised (``expm1``) scale; 1 for columns without non-zero values.
    """
    X = sp.csc_matrix(X)
    X.sort_indices()
    n_cols = X.shape[1]
    counts = np.diff(X.indptr)
    cols = np.repeat(np.arange(n_cols), counts)
    order = np.lexsort((X.data, cols))  # sort values within each column
    data = np.expm1(X.data[order].astype(np.float64))
    med = np.ones(n_cols)
    has = counts > 0
    lo = X.indptr[:-1] + (counts - 1) // 2
    hi = X.indptr[:-1] + counts // 2
    med[has] = 0.5 * (data[lo[has]] + data[hi[has]])
    return med


def _highly_variable(lognorm: sp.csr_matrix, n_top: int) -> np.ndarray:
    """Boolean mask of the ``n_top`` highly variable genes (scanpy, Cell Ranger flavour)."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(lognorm)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="cell_ranger")
    return adata.var["highly_variable"].to_numpy()
