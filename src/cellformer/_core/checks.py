"""Checks on user input. Every error says what is wrong and how to fix it."""

from __future__ import annotations

import difflib
import warnings
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellformer._errors import (
    CellformerError,
    InputError,
    OverwriteError,
    ParameterError,
    UnsafeFileError,
)

from .labels import check_labels

__all__ = [
    "CellformerError",
    "InputError",
    "OverwriteError",
    "ParameterError",
    "UnsafeFileError",
    "check_key_prefix",
    "check_expression",
    "check_library_sizes",
    "check_var_names",
    "detect_expression_kind",
    "get_matrix",
    "validate_anndata",
]

ExpressionKind = Literal["counts", "lognorm"]

#: log1p(counts per 1e6) of a single-count cell stays below ~14; a larger maximum on non-integer
#: data means values are normalised but not log-transformed.
_MAX_LOG_VALUE = 20.0
#: Share of a cell's non-zero values that must be integer multiples of its smallest one.
_INTEGRAL_SHARE = 0.9
_SAMPLE_ROWS = 2000


def check_key_prefix(key_prefix) -> None:
    """Refuse a ``key_prefix`` that makes unreadable or ambiguous AnnData keys."""
    if key_prefix is None:
        return
    if not isinstance(key_prefix, str) or not key_prefix.strip() or "/" in key_prefix:
        raise InputError(
            f"key_prefix must be a non-empty string without '/' (h5ad files cannot store keys "
            f"with '/'), got {key_prefix!r}; e.g. key_prefix='cellformer'."
        )


def get_matrix(adata: ad.AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for an unknown layer."""
    if layer is None:
        if adata.X is None:
            raise InputError(
                "adata.X is empty. Pass layer=... naming the layer that holds expression values."
            )
        return adata.X
    if layer not in adata.layers:
        available = list(adata.layers.keys())
        raise InputError(
            f"Layer {layer!r} is not in adata.layers (available: {available or 'none'}). "
            "Pass one of those, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _sample_rows(X, n: int = _SAMPLE_ROWS, seed: int = 0):
    """Draw a deterministic sample of rows (all when the matrix is small) as a CSR matrix."""
    n_obs = X.shape[0]
    if n_obs > n:
        idx = np.sort(np.random.default_rng(seed).choice(n_obs, n, replace=False))
    else:
        idx = np.arange(n_obs)
    rows = X[idx]  # row indexing also reads backed (on-disk) matrices
    if not sp.issparse(rows) and np.asarray(rows).dtype == np.float16:
        rows = np.asarray(rows, dtype=np.float32)  # scipy.sparse has no float16
    return sp.csr_matrix(rows)


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def _integral_share(X: sp.csr_matrix) -> float:
    """Share of non-zero values that are integer multiples of their cell's smallest value.

    Normalised counts ``c * s_cell`` (any per-cell scale ``s_cell``) pass: divided by the cell's
    smallest value (usually one count) they are integers again. Only ratios up to 1,000 count,
    where float32 rounding stays well below the tolerance.
    """
    X = sp.csr_matrix(X)
    X.eliminate_zeros()
    counts = np.diff(X.indptr)
    if X.nnz == 0:
        return 0.0
    rows = np.repeat(np.arange(X.shape[0]), counts)
    smallest = np.full(X.shape[0], np.inf)
    np.minimum.at(smallest, rows, X.data)
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = X.data / smallest[rows]
    usable = ratio <= 1000
    if usable.mean() < 0.5:  # values spread too far to be a few counts apart
        return 0.0
    # a cell's smallest value is trivially 1 × itself: the evidence is in the others
    r = ratio[usable & (ratio > 1 + 1e-6)]
    if r.size < 20:
        return 0.0
    return float(np.mean(np.abs(r - np.round(r)) < 0.02))


def _whole_number_cells_share(values: sp.csr_matrix, min_values: int = 5) -> float:
    """Share of cells whose values are all whole numbers (cells with ``min_values`` or more).

    ``expm1`` of log-normalised values are counts times ``10,000 / library``: whole numbers
    only in the rare cell whose library divides 10,000 (or that has one or two genes, hence the
    minimum). ``expm1`` of ``log1p(counts)`` are whole numbers in every cell.
    """
    X = sp.csr_matrix(values)
    X.eliminate_zeros()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    usable = X.data <= 1e4  # float32 log values keep ~1e-3 absolute precision up to here
    tolerance = 2e-3 + 1e-6 * X.data
    fractional = usable & (np.abs(X.data - np.rint(X.data)) > tolerance)
    n_values = np.bincount(rows[usable], minlength=X.shape[0])
    n_fractional = np.bincount(rows[fractional], minlength=X.shape[0])
    cells = n_values >= min_values
    return float((n_fractional[cells] == 0).mean()) if cells.any() else 0.0


def _cell_sums_constant(values: sp.csr_matrix) -> float | None:
    """Return the common per-cell total when all cells sum to it (±1 %), else ``None``."""
    sums = np.asarray(values.sum(axis=1)).ravel()
    sums = sums[sums > 0]
    if sums.size < 2:
        return None
    median = float(np.median(sums))
    return median if np.all(np.abs(sums - median) <= 0.01 * median) else None


def detect_expression_kind(X, layer: str | None = None) -> ExpressionKind:
    """Tell raw counts from log-normalised values, on a sample of cells.

    Integers are counts. Non-integer values must be ``log1p`` of normalised counts
    (``sc.pp.normalize_total`` then ``sc.pp.log1p``, Seurat's ``LogNormalize``): then
    ``expm1`` of a cell's values are integer multiples of its smallest one. Values that are
    normalised but not logged, logged with another base (log2, log10), or normalised to another
    total than 10,000 are refused with the fix; non-integer values that fit none of these are
    taken as log-normalised with a warning when small (≤ 20), refused when larger.

    Parameters
    ----------
    X
        Cells × genes matrix (dense, sparse or backed).
    layer
        Only used in messages.

    Returns
    -------
    ``"counts"`` or ``"lognorm"``.

    Raises
    ------
    InputError
        Negative values (scaled data), normalised but not log-transformed values, another log
        base or normalisation total, or large non-integer values of unknown kind.
    """
    sample = _sample_rows(X)
    vals = _values(sample)
    vals = vals[vals != 0]
    if vals.size == 0:
        raise InputError(
            f"{_where(layer)} holds only zeros in the sampled cells. Pass the layer that holds expression."
        )
    vmin = float(vals.min())
    if vmin < 0:
        raise InputError(
            f"{_where(layer)} has negative values (min {vmin:.3g}): it looks scaled or z-scored "
            "(sc.pp.scale). cellformer needs raw counts or log-normalised values: pass layer=... "
            "with counts, or use adata.raw (e.g. adata = adata.raw.to_adata())."
        )
    if np.all(np.abs(vals - np.round(vals)) < 1e-6):
        return "counts"
    where = _where(layer)
    sample = sp.csr_matrix(sample, dtype=np.float64)
    natural = sample.copy()
    natural.data = np.expm1(np.minimum(natural.data, 700.0))
    if _integral_share(natural) >= _INTEGRAL_SHARE:
        if _whole_number_cells_share(natural) >= _INTEGRAL_SHARE:
            raise InputError(
                f"{where} looks like log1p of raw counts that were never normalised: expm1 of "
                "the values gives whole numbers (sc.pp.log1p without sc.pp.normalize_total "
                "first). Pass the raw counts instead (layer=..., or adata.X = np.expm1(adata.X) "
                "restores them), or run sc.pp.normalize_total(adata, target_sum=1e4) before "
                "sc.pp.log1p."
            )
        total = _cell_sums_constant(natural)
        if total is not None and not 0.5e4 <= total <= 2e4:
            raise InputError(
                f"{where} is log1p of counts normalised to {total:.3g} per cell; cellformer (like "
                "scanpy's and Seurat's defaults) uses 10,000. Pass raw counts, or normalise with "
                "sc.pp.normalize_total(adata, target_sum=1e4) before sc.pp.log1p."
            )
        return "lognorm"
    vmax = float(vals.max())
    for name, base in (("log2", 2.0), ("log10", 10.0)):
        other = sample.copy()
        other.data = np.power(base, np.minimum(other.data, 300 / np.log10(base))) - 1
        if vmax < 60 and _integral_share(other) >= _INTEGRAL_SHARE:
            raise InputError(
                f"{where} looks {name}(x + 1)-transformed (e.g. {name}(CPM + 1)); cellformer needs the "
                f"natural log of counts per 10,000 (sc.pp.log1p). Pass raw counts (layer=...), or "
                f"convert: X = np.log1p((np.power({base:g}, X) - 1) / total * 1e4) with each cell's "
                "total of the unlogged values."
            )
    if _integral_share(sample) >= _INTEGRAL_SHARE:
        raise InputError(
            f"{where} has non-integer values up to {vmax:.4g} that are normalised counts which were "
            "not log-transformed (e.g. sc.pp.normalize_total without sc.pp.log1p). Run "
            "sc.pp.log1p(adata) first, or pass the raw counts layer."
        )
    if vmax > _MAX_LOG_VALUE:
        raise InputError(
            f"{where} has non-integer values up to {vmax:.4g} that are neither counts nor "
            "log-normalised counts (corrected counts, e.g. SoupX or CellBender output?). Pass the "
            "raw counts layer, or round corrected counts first: adata.X = np.rint(adata.X)."
        )
    warnings.warn(
        f"{where} holds non-integer values up to {vmax:.3g} that are not log1p of normalised "
        "counts (per cell, expm1 of the values are not multiples of one count): they are used as "
        "log-normalised values. If they are something else (corrected or imputed counts, another "
        "transform), pass raw counts instead.",
        UserWarning,
        stacklevel=3,
    )
    return "lognorm"


#: Suffix of the previous time point's genes in a paired AnnData (``pp.pair_timepoints``).
PREVIOUS_SUFFIX = "@previous"


def kind_matrix(adata: ad.AnnData, layer: str | None = None):
    """Return the matrix whose values tell counts from log-normalised values.

    For two time points side by side (:func:`~cellformer.pp.pair_timepoints`) that is the first
    one: each half is normalised by its own library size, so a whole row is not one cell's
    normalised counts.
    """
    X = get_matrix(adata, layer)
    names = [str(g) for g in adata.var_names]
    half = len(names) // 2
    if half and names[half:] == [g + PREVIOUS_SUFFIX for g in names[:half]]:
        return X[:, :half]
    return X


def check_expression(
    adata: ad.AnnData,
    layer: str | None = None,
    require: Literal["counts", "lognorm", "any"] = "any",
    allow_empty_cells: bool = False,
) -> ExpressionKind:
    """Validate an expression matrix and tell whether it holds counts or log-normalised values.

    Checks, on the whole matrix: NaN or infinite values, negative values, cells without any
    expression; on a sample: counts vs log-normalised.

    Parameters
    ----------
    adata
        Cells × genes data.
    layer
        Layer to check; ``None`` for ``adata.X``.
    require
        ``"counts"`` rejects log-normalised data (for methods that need raw counts), ``"lognorm"``
        rejects counts, ``"any"`` accepts both.
    allow_empty_cells
        Accept cells without any expression (a query: they are reported and not annotated);
        a training set rejects them.

    Returns
    -------
    ``"counts"`` or ``"lognorm"``.
    """
    key = _read_only_file_key(adata, layer, require, allow_empty_cells)
    if key is not None and key in _CHECKED_FILES:
        return _CHECKED_FILES[key]
    kind = _check_expression(adata, layer, require, allow_empty_cells)
    if key is not None:
        _CHECKED_FILES[key] = kind
    return kind


#: Results of :func:`check_expression` on files opened read-only (``backed="r"``), which
#: cannot change while open: a large query is read once, not once per step that checks it.
_CHECKED_FILES: dict[tuple, str] = {}


def _read_only_file_key(adata, layer, require, allow_empty_cells) -> tuple | None:
    """Key of a whole AnnData backed by a file opened read-only (its size and mtime included)."""
    import os

    if not getattr(adata, "isbacked", False) or adata.is_view:
        return None
    try:
        if adata.file._filemode != "r":
            return None
        stat = os.stat(adata.filename)
    except (AttributeError, OSError):
        return None
    path = str(adata.filename)
    return (path, stat.st_size, stat.st_mtime_ns, adata.shape, layer, require, allow_empty_cells)


def _check_expression(adata, layer, require, allow_empty_cells) -> ExpressionKind:
    X = get_matrix(adata, layer)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"{_where(layer)} has dtype {X.dtype}; expression values must be numeric.")
    # whole-matrix checks, chunked so that large (and backed) data stay in bounded memory
    n_bad = 0
    min_val = np.inf
    row_sums = np.empty(adata.n_obs, dtype=np.float64)
    chunk = 10_000
    for start in range(0, adata.n_obs, chunk):
        block = X[start : start + chunk]
        vals = _values(block)
        finite = np.isfinite(vals)
        n_bad += int((~finite).sum())
        if finite.any():
            min_val = min(min_val, float(vals[finite].min()))
        row_sums[start : start + chunk] = np.asarray(abs(block).sum(axis=1)).ravel()
    if n_bad:
        raise InputError(
            f"{_where(layer)} has {n_bad} NaN or infinite values. Remove or fix those cells/genes "
            "before training (e.g. adata = adata[np.isfinite(X).all(1)]), or recompute the layer."
        )
    if min_val < 0:
        raw = ""
        if layer is None and adata.raw is not None:
            raw = (
                f" adata.raw holds {adata.raw.n_vars} genes, as scanpy keeps them before "
                "scaling: adata = adata.raw.to_adata() (command line: --layer raw)."
            )
        raise InputError(
            f"{_where(layer)} has negative values (min {min_val:.3g}): it looks scaled or z-scored "
            "(sc.pp.scale). Pass raw counts or log-normalised values instead: layer=... with counts, "
            f"or adata.raw.to_adata().{raw}"
        )
    empty = np.flatnonzero(row_sums == 0)
    if empty.size == adata.n_obs:
        raise InputError(
            f"{_where(layer)} holds only zeros. Pass the layer that holds expression values."
        )
    if empty.size and not allow_empty_cells:
        names = ", ".join(map(str, adata.obs_names[empty[:5]]))
        raise InputError(
            f"{empty.size} cell(s) have no expression at all (e.g. {names}). Remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    kind = detect_expression_kind(kind_matrix(adata, layer), layer)
    if require == "counts" and kind != "counts":
        raise InputError(
            f"{_where(layer)} holds log-normalised (non-integer) values, but raw counts are needed "
            "here. Pass layer=... naming the raw counts layer (e.g. 'counts')."
        )
    if require == "lognorm" and kind != "lognorm":
        raise InputError(
            f"{_where(layer)} holds raw counts, but log-normalised values are needed here. Run "
            "sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata), or pass that layer."
        )
    return kind


def check_has_genes(adata: ad.AnnData, what: str = "adata") -> None:
    """Reject an AnnData without genes, naming a results-only file for what it is."""
    if adata.n_vars > 0:
        return
    results = [c for c in map(str, adata.obs.columns) if c.endswith("_prediction")]
    if results or "cellformer" in adata.uns:
        raise InputError(
            f"{what} has no genes: it is a results-only file (predictions in obs "
            f"{results[:3]}, no expression), as `cellformer annotate --results-only` writes. "
            "Pass the file with the cells' expression it was made from."
        )
    raise InputError(f"{what} has no genes (n_vars = 0): pass a file with the cells' expression.")


def check_var_names(adata: ad.AnnData) -> None:
    """Reject an AnnData without genes, and duplicated or empty gene names."""
    check_has_genes(adata)
    names = pd.Index(adata.var_names)
    if names.has_duplicates:
        dups = names[names.duplicated()].unique()
        raise InputError(
            f"{len(dups)} gene name(s) occur more than once in adata.var_names (e.g. "
            f"{', '.join(map(str, dups[:5]))}). Make them unique with adata.var_names_make_unique(), "
            "or aggregate duplicated genes."
        )
    if (names.astype(str).str.len() == 0).any():
        raise InputError(
            "Some gene names are empty strings. Give every gene a name in adata.var_names."
        )


def validate_anndata(
    adata: ad.AnnData,
    layer: str | None = None,
    labels_key: str | None = None,
    require: Literal["counts", "lognorm", "any"] = "any",
    unlabeled_category: str | None = None,
) -> ExpressionKind:
    """Run all checks a model needs before training; return the expression kind."""
    if not isinstance(adata, ad.AnnData):
        raise InputError(
            f"Expected an AnnData, got {type(adata).__name__}. For MuData pass the RNA modality, "
            "e.g. mdata['rna']."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    check_var_names(adata)
    if labels_key is not None:
        check_labels(adata, labels_key, unlabeled_category=unlabeled_category)
    return check_expression(adata, layer, require=require)


def check_library_sizes(adata: ad.AnnData, key: str) -> np.ndarray:
    """Validate an ``obs`` column of library sizes and return it as float64.

    Library sizes must be finite and positive: each cell's total counts over its whole
    transcriptome (e.g. Seurat's ``nCount_RNA``, scanpy's ``total_counts``).
    """
    if key not in adata.obs:
        close = difflib.get_close_matches(key, list(map(str, adata.obs.columns)), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"library_size_key={key!r} is not a column of adata.obs.{hint} Compute it from the "
            "full counts before subsetting genes, e.g. adata.obs['total_counts'] = "
            "adata.X.sum(1), or use cf.pp.subset_genes, which keeps it."
        )
    col = adata.obs[key]
    if not pd.api.types.is_numeric_dtype(col):
        raise InputError(f"adata.obs[{key!r}] must hold numbers (library sizes), got {col.dtype}.")
    values = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        raise InputError(
            f"adata.obs[{key!r}] has {int(bad.sum())} missing, non-finite or non-positive library "
            "sizes; every cell needs its total counts (> 0)."
        )
    return values
