"""Helpers of inference: passes of similar length, cell indices, obs columns, owned keys."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core
from cellformer._errors import ParameterError

__all__ = [
    "OUTPUTS_KEY",
    "check_indices",
    "claim_keys",
    "full_column",
    "sorted_passes",
    "write_latent",
]


def sorted_passes(fn, x: torch.Tensor, extra: dict, lengths: torch.Tensor, cells: int):
    """Apply ``fn(x, extra)`` in passes of ``cells`` cells of similar ``lengths``.

    Cells are sorted by their number of tokens, so that each pass pads to a length close to its
    cells' own (attention cost grows with the padded length); results come back in the input's
    order.
    """
    if x.shape[0] <= cells:
        return fn(x, extra)
    order = torch.argsort(lengths, stable=True)
    outs = [
        fn(x[rows], {key: value[rows] for key, value in extra.items()})
        for rows in order.split(cells)
    ]
    out = torch.cat(outs)
    result = torch.empty_like(out)
    result[order] = out
    return result


#: ``uns`` entry listing the ``obs``/``obsm`` keys cellformer wrote (it rewrites only those).
OUTPUTS_KEY = "cellformer_outputs"


def claim_keys(adata: ad.AnnData, where: str, keys: list[str]) -> None:
    """Record ``keys`` of ``adata.obs``/``obsm`` as cellformer's; refuse ones the user owns.

    A key that exists and is not listed in ``uns["cellformer_outputs"]`` (e.g. the user's own
    ``obs["cellformer_prediction"]``) is an error, never overwritten.
    """
    owned = {str(k) for k in np.asarray(adata.uns.get(OUTPUTS_KEY, []), dtype=object).ravel()}
    store = adata.obs if where == "obs" else adata.obsm
    theirs = [k for k in keys if k in store and f"{where}:{k}" not in owned]
    if theirs:
        raise _core.InputError(
            f"adata.{where} already has {theirs}, which cellformer did not write: it does not "
            "overwrite them. Pass another key_prefix (e.g. key_prefix='cellformer2'), or "
            "rename or delete those keys first."
        )
    adata.uns[OUTPUTS_KEY] = sorted(owned | {f"{where}:{k}" for k in keys})


def check_indices(indices, n_obs: int) -> np.ndarray | None:
    """Return ``indices`` as distinct int positions in ``[0, n_obs)`` (``None`` stays ``None``)."""
    if indices is None:
        return None
    rows = np.asarray(indices)
    if rows.dtype == bool:
        if rows.shape != (n_obs,):
            raise ParameterError(f"A boolean indices mask needs {n_obs} values, got {rows.shape}.")
        rows = np.flatnonzero(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ParameterError("indices must be integer positions of cells (or a boolean mask).")
    if len(rows) == 0:
        raise ParameterError("indices is empty: pass the positions of at least one cell.")
    if rows.min() < 0 or rows.max() >= n_obs:
        raise ParameterError(
            f"indices must be positions in [0, {n_obs}), got {rows.min()}..{rows.max()}."
        )
    if len(np.unique(rows)) != len(rows):
        raise ParameterError("indices has repeated cells.")
    return rows.astype(np.int64)


def full_column(values, rows: np.ndarray | None, n_obs: int, categories=None):
    """Build a whole ``obs`` column from the values of ``rows`` (others missing)."""
    values = np.asarray(values)
    if categories is not None:
        full = np.full(n_obs, None, dtype=object)
        full[slice(None) if rows is None else rows] = values
        return pd.Categorical(full, categories=categories)
    if rows is None:
        return values
    if values.dtype == bool:  # missing flags: a nullable boolean column
        full = pd.array([pd.NA] * n_obs, dtype="boolean")
        full[rows] = values
        return full
    full = np.full(n_obs, np.nan, dtype=np.float32)
    full[rows] = values
    return full


def write_latent(adata: ad.AnnData, z: np.ndarray, key_prefix: str, rows: np.ndarray | None):
    """Write ``z`` to ``obsm[f"X_{key_prefix}"]`` (rows not in ``rows``: NaN)."""
    claim_keys(adata, "obsm", [f"X_{key_prefix}"])
    if rows is None:
        adata.obsm[f"X_{key_prefix}"] = z
    else:
        full = np.full((adata.n_obs, z.shape[1]), np.nan, dtype=z.dtype)
        full[rows] = z
        adata.obsm[f"X_{key_prefix}"] = full
