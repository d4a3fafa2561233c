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

from cellformer._errors import MissingDependencyError, ParameterError

from ._download import data_dir, fetch

__all__ = ["GI_TRACT", "SCTAB_ASSAYS", "CellOntology", "sctab", "sctab_genes"]

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
#: Read for the cell-type filters only.
_FILTER_COLUMNS = ["dataset_id", "cell_type_ontology_term_id"]

#: Cell Ontology term scTab's cell types must descend from.
NATIVE_CELL = "CL:0000003"


class CellOntology:
    """The ``is_a`` hierarchy of an OBO file (e.g. the Cell Ontology's ``cl-simple.obo``).

    Parameters
    ----------
    parents
        Term ID → IDs of its direct ``is_a`` parents.
    names
        Term ID → name.
    """

    def __init__(self, parents: dict[str, set[str]], names: dict[str, str]):
        self.parents = parents
        self.names = names
        self._ancestors: dict[str, frozenset[str]] = {}

    @classmethod
    def read(cls, path: str | Path | None = None) -> CellOntology:
        """Parse an OBO file; ``None`` downloads (once) the Cell Ontology, ``cl-simple.obo``.

        Only ``[Term]`` stanzas, their ``id``, ``name`` and ``is_a`` lines are read; obsolete
        terms are left out.
        """
        path = fetch("cl-simple.obo") if path is None else Path(path)
        parents: dict[str, set[str]] = {}
        names: dict[str, str] = {}

        def close(term: dict | None) -> None:
            if term and "id" in term and not term.get("obsolete"):
                parents[term["id"]] = term["is_a"]
                names[term["id"]] = term.get("name", term["id"])

        term = None
        with open(path, encoding="utf-8") as handle:
            for raw in handle:
                line = raw.strip()
                if line.startswith("["):
                    close(term)
                    term = {"is_a": set()} if line == "[Term]" else None
                elif term is not None and ": " in line:
                    key, value = line.split(": ", 1)
                    if key == "id":
                        term["id"] = value
                    elif key == "name":
                        term["name"] = value
                    elif key == "is_a":
                        term["is_a"].add(value.split(" ", 1)[0])
                    elif key == "is_obsolete" and value == "true":
                        term["obsolete"] = True
        close(term)
        if not parents:
            raise ParameterError(f"No [Term] stanza in {path}: is it an OBO file?")
        return cls(parents, names)

    def ancestors(self, term: str) -> frozenset[str]:
        """Every term above ``term`` through ``is_a`` (``term`` itself excluded)."""
        if term not in self._ancestors:
            found: set[str] = set()
            stack = list(self.parents.get(term, ()))
            while stack:
                parent = stack.pop()
                if parent not in found:
                    found.add(parent)
                    stack.extend(self.parents.get(parent, ()))
            self._ancestors[term] = frozenset(found)
        return self._ancestors[term]


def _value_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def _open_experiment(census, census_version: str, organism: str):
    """Return the SOMA experiment to query and what this call opened (to close), if anything."""
    try:
        import tiledbsoma
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(_CENSUS_EXTRA) from err
    if census is None:
        try:
            import cellxgene_census
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(_CENSUS_EXTRA) from err
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


def sctab_genes() -> list[str]:
    """Return the 19,331 protein-coding gene symbols of scTab (downloaded once, see :func:`~cellformer.datasets.fetch`).

    The ``gene_names`` column of ``features.parquet`` in the scTab repository (theislab/scTab,
    ``notebooks/store_creation``), the genes of every scTab model. Reading it needs pyarrow
    (installed with the census extra).
    """
    return pd.read_parquet(fetch("sctab_features.parquet"))["gene_names"].astype(str).tolist()


def _ontology_key(ontology) -> str | None:
    if isinstance(ontology, CellOntology):
        edges = sorted((term, sorted(parents)) for term, parents in ontology.parents.items())
        return hashlib.sha256(json.dumps(edges).encode()).hexdigest()
    return None if ontology is None else str(ontology)


def _cache_path(params: dict) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return data_dir() / "sctab" / f"sctab_{digest}.h5ad"


def _keep_cell_types(
    obs: pd.DataFrame,
    min_cells: int,
    min_samples: int,
    ontology: CellOntology | None = None,
    min_ancestors: int = 8,
) -> list[str]:
    """Cell types scTab keeps (see :func:`sctab`), counted over every cell of ``obs``."""
    samples = obs["dataset_id"].astype(str) + "/" + obs["donor_id"].astype(str)
    stats = (
        obs.assign(sample=samples.to_numpy())
        .groupby("cell_type", observed=True)
        .agg(
            cells=("sample", "size"),
            samples=("sample", "nunique"),
            term=("cell_type_ontology_term_id", "first"),
        )
    )
    keep = (stats.cells >= min_cells) & (stats.samples >= min_samples)
    if ontology is not None:
        deep = [
            NATIVE_CELL in ontology.ancestors(t) and len(ontology.ancestors(t)) >= min_ancestors
            for t in stats.term.astype(str)
        ]
        dropped = stats.index[keep & ~np.asarray(deep)]
        if len(dropped):
            logger.info(
                "Cell types dropped by the ontology filter (not a native cell, or fewer than "
                "%d ancestor terms): %s",
                min_ancestors,
                sorted(dropped.astype(str)),
            )
        keep &= deep
    return sorted(stats.index[keep].astype(str))


def sctab(
    tissues: Sequence[str] | str,
    cell_types: Sequence[str] | None = None,
    max_cells: int | None = None,
    census_version: str = "2023-05-15",
    genes: Sequence[str] | str | None = "sctab",
    min_cells: int = 5000,
    min_samples: int = 31,
    ontology: str | Path | CellOntology | None = "cl",
    min_ancestors: int = 8,
    assays: Sequence[str] = SCTAB_ASSAYS,
    organism: str = "homo_sapiens",
    census=None,
    seed: int = 0,
    cache: bool = True,
) -> ad.AnnData:
    """Query a subset of CELLxGENE Census with scTab's filters; cache it as h5ad in :func:`~cellformer.datasets.data_dir`.

    The filters of scTab (Fischer et al. 2024, ``notebooks/store_creation`` of theislab/scTab):
    primary data only (no cell counted twice), 10x protocols (:data:`SCTAB_ASSAYS`), and cell
    types that have at least ``min_cells`` cells and more than 30 samples (donor × dataset
    pairs), counted over every tissue, and that in the Cell Ontology descend from *native cell*
    with at least ``min_ancestors`` ``is_a`` ancestors (scTab drops the coarse labels with ≤ 7).
    Of those cells, the ones from ``tissues`` are kept, optionally only ``cell_types`` and at
    most ``max_cells`` (a seeded random subset).

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
        ``"sctab"``: scTab's 19,331 protein-coding genes (:func:`sctab_genes`); or genes to keep,
        Ensembl IDs (census ``feature_id``, if every one starts with ``ENS``) or symbols
        (``feature_name``); ``None``: every gene.
    min_cells, min_samples
        Least cells and (donor, dataset) samples of a kept cell type.
    ontology
        ``"cl"``: the Cell Ontology's ``cl-simple.obo`` (downloaded once into :func:`~cellformer.datasets.data_dir`,
        as :func:`~cellformer.datasets.fetch` does); a path to an OBO file or a :class:`CellOntology`; ``None``: no
        ontology filter.
    min_ancestors
        Least ``is_a`` ancestors of a kept cell type's term.
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
        raise ParameterError("Name at least one tissue, e.g. tissues=['brain'].")
    params = {
        "tissues": sorted(tissues),
        "cell_types": None if cell_types is None else sorted(cell_types),
        "max_cells": max_cells,
        "census_version": census_version,
        "genes": genes if genes is None or isinstance(genes, str) else sorted(genes),
        "min_cells": min_cells,
        "min_samples": min_samples,
        "ontology": _ontology_key(ontology),
        "min_ancestors": min_ancestors,
        "assays": sorted(assays),
        "organism": organism,
        "seed": seed,
    }
    path = _cache_path(params)
    if cache and path.exists():
        logger.info("scTab subset read from the cache %s.", path)
        return ad.read_h5ad(path)

    if isinstance(ontology, str | Path):
        ontology = CellOntology.read(None if ontology == "cl" else ontology)
    if isinstance(genes, str):
        if genes != "sctab":
            raise ParameterError(f"genes must be 'sctab', a list of genes or None, got {genes!r}.")
        genes = sctab_genes()
    experiment, opened = _open_experiment(census, census_version, organism)
    try:
        adata = _query(experiment, tissues, cell_types, max_cells, genes, min_cells,
                       min_samples, ontology, min_ancestors, assays, seed)  # fmt: skip
    finally:
        if opened is not None:
            opened.close()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path)
        logger.info("scTab subset (%d cells × %d genes) cached at %s.", *adata.shape, path)
    return adata


def _query(experiment, tissues, cell_types, max_cells, genes, min_cells, min_samples, ontology,
           min_ancestors, assays, seed) -> ad.AnnData:  # fmt: skip
    import tiledbsoma

    obs = (
        experiment.obs.read(
            column_names=_OBS_COLUMNS + _FILTER_COLUMNS,
            value_filter=f"is_primary_data == True and assay in {_value_list(assays)}",
        )
        .concat()
        .to_pandas()
    )
    kept_types = _keep_cell_types(obs, min_cells, min_samples, ontology, min_ancestors)
    if cell_types is not None:
        unknown = sorted(set(cell_types) - set(kept_types))
        if unknown:
            logger.warning("Cell types not kept by the scTab filters (or absent): %s", unknown)
        kept_types = sorted(set(kept_types) & set(cell_types))
    present = set(obs["tissue_general"].astype(str))
    missing = sorted(set(tissues) - present)
    if len(missing) == len(set(tissues)):
        raise ParameterError(
            f"None of the tissues {sorted(tissues)} is in this census's tissue_general column; "
            f"it has e.g. {sorted(present)[:12]}."
        )
    if missing:
        logger.warning("Tissues absent from this census: %s", missing)
    mask = obs["tissue_general"].isin(tissues) & obs["cell_type"].isin(kept_types)
    ids = obs.loc[mask, "soma_joinid"].to_numpy()
    if len(ids) == 0:
        raise ParameterError(
            f"No cell passes the filters in {sorted(tissues)}: lower min_cells ({min_cells}), "
            f"min_samples ({min_samples}) or min_ancestors ({min_ancestors}), or choose other "
            "tissues or cell types."
        )
    if max_cells is not None and len(ids) > max_cells:
        ids = np.random.default_rng(seed).choice(ids, max_cells, replace=False)
    ids = np.sort(ids)
    var_query = None
    if genes is not None:
        column = "feature_id" if all(str(g).startswith("ENS") for g in genes) else "feature_name"
        var_query = tiledbsoma.AxisQuery(value_filter=f"{column} in {_value_list(genes)}")
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
