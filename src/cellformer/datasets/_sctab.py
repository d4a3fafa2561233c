"""scTab-style subsets of CELLxGENE Census (TileDB-SOMA), cached as h5ad."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ._download import data_dir

__all__ = ["GI_TRACT", "SCTAB_ASSAYS", "sctab"]

logger = logging.getLogger("cellformer")

#: Sequencing protocols scTab keeps (Fischer et al. 2024, ``docs/data.md`` of theislab/scTab).
SCTAB_ASSAYS: tuple[str, ...] = (
    "10x 5' v2",
    "10x 3' v3",
    "10x 3' v2",
    "10x 5' v1",
    "10x 3' v1",
    "10x 3' transcription profiling",
    "10x 5' transcription profiling",
)

#: Census ``tissue_general`` values of the gastrointestinal tract (for the "train on GI tract,
#: test on brain" setting of the Heimdall benchmark); values absent from a census are ignored.
GI_TRACT: tuple[str, ...] = (
    "esophagus",
    "stomach",
    "small intestine",
    "intestine",
    "large intestine",
    "colon",
)

_CENSUS_EXTRA = (
    "datasets.sctab needs the census extra: pip install 'cellformer[census]' "
    "(tiledbsoma and cellxgene-census)."
)

_OBS_COLUMNS = ["soma_joinid", "cell_type", "tissue_general", "donor_id", "assay"]


def _value_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def _open_experiment(census, census_version: str, organism: str):
    """Return the SOMA experiment to query and what this call opened (to close), if anything."""
    try:
        import tiledbsoma
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_CENSUS_EXTRA) from err
    if census is None:
        try:
            import cellxgene_census
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(_CENSUS_EXTRA) from err
        census = cellxgene_census.open_soma(census_version=census_version)
        return census["census_data"][organism], census
    if isinstance(census, str | Path):
        opened = tiledbsoma.open(str(census))
        if isinstance(opened, tiledbsoma.Experiment):
            return opened, opened
        return opened["census_data"][organism], opened
    if isinstance(census, tiledbsoma.Experiment):
        return census, None
    return census["census_data"][organism], None


def _cache_path(params: dict) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return data_dir() / "sctab" / f"sctab_{digest}.h5ad"


def _keep_cell_types(obs: pd.DataFrame, min_cells: int, min_donors: int) -> list[str]:
    """Cell types with at least ``min_cells`` cells from at least ``min_donors`` donors."""
    stats = obs.groupby("cell_type", observed=True).agg(
        cells=("donor_id", "size"), donors=("donor_id", "nunique")
    )
    keep = stats[(stats.cells >= min_cells) & (stats.donors >= min_donors)]
    return sorted(keep.index.astype(str))


def sctab(
    tissues: Sequence[str] | str,
    cell_types: Sequence[str] | None = None,
    max_cells: int | None = None,
    census_version: str = "2023-05-15",
    genes: Sequence[str] | None = None,
    min_cells: int = 5000,
    min_donors: int = 30,
    assays: Sequence[str] = SCTAB_ASSAYS,
    organism: str = "homo_sapiens",
    census=None,
    seed: int = 0,
    cache: bool = True,
) -> ad.AnnData:
    """Query a subset of CELLxGENE Census with scTab's filters; cache it as h5ad in :func:`data_dir`.

    The filters of scTab (Fischer et al. 2024): primary data only (no cell counted twice),
    10x protocols (:data:`SCTAB_ASSAYS`), and cell types with at least ``min_cells`` cells from
    at least ``min_donors`` donors (counted over every tissue, as scTab does). Of those cells,
    the ones from ``tissues`` are kept, optionally only ``cell_types`` and at most ``max_cells``
    (a seeded random subset). scTab's ontology-depth filter (≥ 7 parent terms) is not applied.

    Needs the census extra: ``pip install 'cellformer[census]'``.

    Parameters
    ----------
    tissues
        Census ``tissue_general`` values, e.g. ``["brain"]`` or :data:`GI_TRACT`.
    cell_types
        Keep only these cell types (after the scTab filters); ``None``: all that pass.
    max_cells
        At most this many cells (random, seeded); ``None``: all.
    census_version
        Census release (scTab used ``"2023-05-08"``; ``"2023-05-15"`` is the LTS release).
    genes
        Ensembl IDs (census ``feature_id``) to keep, e.g. scTab's 19,331 protein-coding genes
        (``features.parquet`` of the scTab repository); ``None``: every gene.
    min_cells, min_donors
        scTab's cell-type filter.
    assays
        Protocols to keep.
    organism
        Census organism.
    census
        An open census (``cellxgene_census.open_soma()``), a SOMA experiment, or the URI of
        either (e.g. a local copy); ``None`` opens the public census of ``census_version``.
    seed
        Seed of the ``max_cells`` subsample.
    cache
        Read and write the result in ``data_dir()/sctab/`` (keyed by every argument above but
        ``census``).

    Returns
    -------
    Raw counts (cells × genes, gene symbols as ``var_names``, Ensembl IDs in
    ``var["feature_id"]``) with ``obs["cell_type"]``, ``obs["tissue_general"]``,
    ``obs["donor_id"]`` and ``obs["assay"]``.
    """
    tissues = [tissues] if isinstance(tissues, str) else list(tissues)
    if not tissues:
        raise ValueError("Name at least one tissue, e.g. tissues=['brain'].")
    params = {
        "tissues": sorted(tissues),
        "cell_types": None if cell_types is None else sorted(cell_types),
        "max_cells": max_cells,
        "census_version": census_version,
        "genes": None if genes is None else sorted(genes),
        "min_cells": min_cells,
        "min_donors": min_donors,
        "assays": sorted(assays),
        "organism": organism,
        "seed": seed,
    }
    path = _cache_path(params)
    if cache and path.exists():
        logger.info("scTab subset read from the cache %s.", path)
        return ad.read_h5ad(path)

    experiment, opened = _open_experiment(census, census_version, organism)
    try:
        adata = _query(experiment, tissues, cell_types, max_cells, genes, min_cells,
                       min_donors, assays, seed)  # fmt: skip
    finally:
        if opened is not None:
            opened.close()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path)
        logger.info("scTab subset (%d cells × %d genes) cached at %s.", *adata.shape, path)
    return adata


def _query(experiment, tissues, cell_types, max_cells, genes, min_cells, min_donors, assays,
           seed) -> ad.AnnData:  # fmt: skip
    import tiledbsoma

    obs = (
        experiment.obs.read(
            column_names=_OBS_COLUMNS,
            value_filter=f"is_primary_data == True and assay in {_value_list(assays)}",
        )
        .concat()
        .to_pandas()
    )
    kept_types = _keep_cell_types(obs, min_cells, min_donors)
    if cell_types is not None:
        unknown = sorted(set(cell_types) - set(kept_types))
        if unknown:
            logger.warning("Cell types not kept by the scTab filters (or absent): %s", unknown)
        kept_types = sorted(set(kept_types) & set(cell_types))
    present = set(obs["tissue_general"].astype(str))
    missing = sorted(set(tissues) - present)
    if len(missing) == len(set(tissues)):
        raise ValueError(
            f"None of the tissues {sorted(tissues)} is in this census's tissue_general column; "
            f"it has e.g. {sorted(present)[:12]}."
        )
    if missing:
        logger.warning("Tissues absent from this census: %s", missing)
    mask = obs["tissue_general"].isin(tissues) & obs["cell_type"].isin(kept_types)
    ids = obs.loc[mask, "soma_joinid"].to_numpy()
    if len(ids) == 0:
        raise ValueError(
            f"No cell passes the filters in {sorted(tissues)}: lower min_cells ({min_cells}) or "
            f"min_donors ({min_donors}), or choose other tissues or cell types."
        )
    if max_cells is not None and len(ids) > max_cells:
        ids = np.random.default_rng(seed).choice(ids, max_cells, replace=False)
    ids = np.sort(ids)
    var_query = None
    if genes is not None:
        var_query = tiledbsoma.AxisQuery(value_filter=f"feature_id in {_value_list(genes)}")
    with experiment.axis_query(
        "RNA", obs_query=tiledbsoma.AxisQuery(coords=(ids,)), var_query=var_query
    ) as query:
        adata = query.to_anndata(X_name="raw", column_names={"obs": _OBS_COLUMNS})
    adata.obs = adata.obs.set_index(adata.obs["soma_joinid"].astype(str))
    adata.obs.index.name = None
    for column in ("cell_type", "tissue_general", "donor_id", "assay"):
        adata.obs[column] = adata.obs[column].astype(str).astype("category")
    if "feature_name" in adata.var:
        adata.var = adata.var.set_index(adata.var["feature_name"].astype(str))
        adata.var.index.name = None
        adata.var_names_make_unique()
    logger.info(
        "scTab subset: %d cells × %d genes, %d cell types, tissues %s.",
        adata.n_obs,
        adata.n_vars,
        adata.obs["cell_type"].nunique(),
        sorted(set(adata.obs["tissue_general"])),
    )
    return adata
