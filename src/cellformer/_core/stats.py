"""Per-fold statistics, computed in chunks so that memory stays bounded for any number of cells."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from cellformer._errors import ParameterError

from .genes import GeneAlignment

__all__ = [
    "fit_scaler",
    "iter_lognorm_chunks",
    "lognorm_csr",
    "lognormalize",
    "scaler_from_sums",
]

TARGET_SUM = 1e4


def lognormalize(
    block, library: np.ndarray | None = None, target_sum: float = TARGET_SUM, dtype=np.float32
):
    """``log1p(counts / library * target_sum)`` for a block of cells (dense or sparse rows).

    ``library`` defaults to the row sums of ``block``; pass the sums over *all* genes when ``block``
    holds only some of them. ``dtype``: of the result (float32, or float64 for models that
    compute in it).
    """
    if library is None:
        library = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()  # no float16 overflow
    scale = target_sum / np.maximum(library, 1e-12)
    if sp.issparse(block):
        out = sp.csr_matrix(sp.diags(scale.astype(dtype)) @ block, dtype=dtype)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(block, dtype=dtype) * scale[:, None].astype(dtype))


def iter_lognorm_chunks(
    X,
    kind: str,
    indices: np.ndarray | None = None,
    alignment: GeneAlignment | None = None,
    chunk_size: int = 4096,
    sparse: bool = False,
    library: np.ndarray | None = None,
    missing: float = np.nan,
    dtype=np.float32,
) -> Iterator[tuple[np.ndarray, np.ndarray | sp.csr_matrix]]:
    """Yield ``(cell_indices, log-normalised block)`` in the model's gene order.

    Parameters
    ----------
    X
        Cells × genes matrix (dense, sparse, or an h5py-backed dataset).
    kind
        ``"counts"`` (normalised here, library size over all of the cell's genes) or ``"lognorm"``.
    indices
        Cells to read (sorted for fast backed access); all cells when ``None``.
    alignment
        Maps ``X``'s genes onto the model's genes; genes the query lacks are *unmeasured*: filled
        with ``missing`` in dense blocks (NaN: models impute or skip them), absent from sparse
        blocks.
    chunk_size
        Cells per block.
    sparse
        Yield CSR blocks (float32) when ``X`` is sparse, instead of dense arrays.
    library
        Library size of every row of ``X`` (counts only); by default each cell's sum over the
        genes of ``X``. Pass the sums over the whole transcriptome when ``X`` holds a gene subset.
    missing
        Value of the genes the alignment lacks in dense blocks.
    dtype
        Of dense blocks: float32, or float64 for a model that computes in it.
    """
    if library is not None:
        library = np.asarray(library, dtype=np.float64).ravel()
        if len(library) != X.shape[0]:
            raise ParameterError(f"library has {len(library)} values for {X.shape[0]} cells.")
    if indices is None:
        indices = np.arange(X.shape[0])
    indices = np.asarray(indices)
    for start in range(0, len(indices), chunk_size):
        idx = indices[start : start + chunk_size]
        contiguous = len(idx) > 0 and idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all()
        # a slice reads a backed (on-disk) matrix in one contiguous pass, an index array row by row
        block = X[int(idx[0]) : int(idx[-1]) + 1] if contiguous else X[idx]
        if kind == "counts":
            block = lognormalize(block, None if library is None else library[idx], dtype=dtype)
        if sparse and sp.issparse(block):
            yield idx, _aligned_csr(block, alignment)
            continue
        if alignment is not None and not alignment.is_identity:
            sub = block[:, alignment.query_idx]
            out = np.full((len(idx), alignment.n_model_genes), missing, dtype=dtype)
            out[:, alignment.model_idx] = sub.toarray() if sp.issparse(sub) else sub
        else:
            out = block.toarray() if sp.issparse(block) else np.asarray(block)
        yield idx, np.asarray(out, dtype=dtype)


def lognorm_csr(
    X, kind: str, alignment: GeneAlignment | None = None, library: np.ndarray | None = None
) -> sp.csr_matrix:
    """Every cell of ``X`` log-normalised on the alignment's genes, as one float32 CSR matrix.

    For an AnnData built on other genes (a pretrained encoder's, a paired time point's): the
    genes ``X`` lacks are zero (not stored), dense or sparse ``X`` alike. ``library``: see
    :func:`iter_lognorm_chunks`.
    """
    blocks = iter_lognorm_chunks(
        X, kind, alignment=alignment, sparse=True, missing=0.0, library=library
    )
    return sp.vstack([sp.csr_matrix(b) for _, b in blocks]).tocsr().astype(np.float32)


def _aligned_csr(block, alignment: GeneAlignment | None) -> sp.csr_matrix:
    """Return a sparse block as float32 CSR in the model's gene order (missing genes empty)."""
    block = sp.csr_matrix(block, dtype=np.float32)
    if alignment is None or alignment.is_identity:
        return block
    sub = sp.csr_matrix(block[:, alignment.query_idx])
    model_cols = np.asarray(alignment.model_idx)[sub.indices]
    return sp.csr_matrix(
        (sub.data, model_cols, sub.indptr), shape=(block.shape[0], alignment.n_model_genes)
    )


def fit_scaler(
    X,
    kind: str,
    indices: np.ndarray | None = None,
    chunk_size: int = 4096,
    library: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation of log-normalised values over the given cells.

    Streams over cells in chunks (float64 accumulators); ``library``: see
    :func:`iter_lognorm_chunks`. Genes with zero variance get a standard
    deviation of 1, so that standardising leaves them at zero instead of dividing by zero.

    Returns
    -------
    ``(mean, std)``, float32 arrays of length ``n_genes``.
    """
    n_genes = X.shape[1]
    total = np.zeros(n_genes)
    total_sq = np.zeros(n_genes)
    n = 0
    for idx, block in iter_lognorm_chunks(X, kind, indices, chunk_size=chunk_size, library=library):
        block = block.astype(np.float64)
        total += block.sum(axis=0)
        total_sq += (block**2).sum(axis=0)
        n += len(idx)
    return scaler_from_sums(total, total_sq, n)


def scaler_from_sums(
    total: np.ndarray, total_sq: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation from sums and sums of squares over ``n`` cells.

    Zero-variance genes get a standard deviation of 1. Returns float32 ``(mean, std)``.
    """
    if n == 0:
        raise ParameterError("Cannot fit a scaler on zero cells.")
    mean = np.asarray(total, dtype=np.float64) / n
    var = np.maximum(np.asarray(total_sq, dtype=np.float64) / n - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
