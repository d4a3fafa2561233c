"""Two time points per cell, side by side, for the paired tokenizer."""

from __future__ import annotations

import anndata as ad
import scipy.sparse as sp

from cellformer._core.checks import (
    PREVIOUS_SUFFIX,
    InputError,
    check_expression,
    check_var_names,
    get_matrix,
)
from cellformer._core.genes import align_genes
from cellformer._core.stats import lognorm_csr

__all__ = ["PREVIOUS_SUFFIX", "pair_timepoints"]


def _lognorm_on(genes, adata: ad.AnnData, layer: str | None, what: str) -> sp.csr_matrix:
    check_var_names(adata)
    kind = check_expression(adata, layer, allow_empty_cells=True)
    alignment = align_genes(genes, adata.var_names, min_coverage=0.0)
    if len(alignment.model_idx) == 0:
        raise InputError(f"The {what} shares no gene with the current time point.")
    return lognorm_csr(get_matrix(adata, layer), kind, alignment)


def pair_timepoints(
    adata: ad.AnnData,
    previous: str | ad.AnnData,
    layer: str | None = None,
    previous_layer: str | None = None,
) -> ad.AnnData:
    """Put each cell's previous time point beside its current one, for a paired tokenizer.

    Each time point is log-normalised on its own (counts by their own library sizes); the result
    has the genes of ``adata``, then the same genes named ``gene + "@previous"``. Train a
    :class:`~cellformer.model.CellTransformer` on it with ``tokenizer={"preset": ...,
    "paired": True}``: a cell becomes ``<cls> current… <sep> previous…``.

    Parameters
    ----------
    adata
        The current time point (cells × genes).
    previous
        The previous time point of the same cells: a layer of ``adata``, or an AnnData with the
        same ``obs_names`` (any order; genes matched by name, genes it lacks are zero).
    layer, previous_layer
        Layers holding the expression of ``adata`` and of a ``previous`` AnnData (``None``: X).

    Returns
    -------
    A new AnnData (``obs`` copied from ``adata``) with log-normalised values.

    Examples
    --------
    >>> paired = cf.pp.pair_timepoints(day7, previous=day0)  # doctest: +SKIP
    >>> cf.model.CellTransformer.setup_anndata(paired, labels_key="fate")  # doctest: +SKIP
    >>> model = cf.model.CellTransformer(paired, tokenizer={"preset": "default", "paired": True})
    """
    genes = [str(g) for g in adata.var_names]
    current = _lognorm_on(genes, adata, layer, "current time point")
    if isinstance(previous, str):
        if previous not in adata.layers:
            raise InputError(
                f"previous={previous!r} is not a layer of adata (layers: {list(adata.layers)}); "
                "pass a layer name or an AnnData of the same cells."
            )
        before = _lognorm_on(genes, adata, previous, f"layer {previous!r}")
    elif isinstance(previous, ad.AnnData):
        missing = adata.obs_names.difference(previous.obs_names)
        if len(missing):
            raise InputError(
                f"{len(missing)} cells of adata are not in previous (e.g. {list(missing[:3])}): "
                "the two AnnData must hold the same cells, matched by obs_names."
            )
        before = _lognorm_on(genes, previous[adata.obs_names], previous_layer, "previous AnnData")
    else:
        raise InputError(
            f"previous must be a layer name or an AnnData, got {type(previous).__name__}."
        )
    paired = ad.AnnData(sp.hstack([current, before]).tocsr(), obs=adata.obs.copy())
    paired.var_names = genes + [g + PREVIOUS_SUFFIX for g in genes]
    return paired
