"""Dataset loaders. Every loader returns cell types in ``obs["cell_type"]``."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pooch
import scanpy as sc
import scipy.sparse as sp

from cellformer._errors import MissingFileError, ParameterError

from ._download import DamagedFileError, DownloadError, damaged, data_dir, fetch

__all__ = ["load", "pbmc3k", "pbmc68k_reduced"]

LABELS_KEY = "cell_type"


def pbmc68k_reduced() -> ad.AnnData:
    """700 PBMCs with FACS-sorted cell types (Zheng et al. 2017), shipped with scanpy; offline.

    This is cellformer's embedded default data set.

    Returns
    -------
    AnnData with 700 cells × 765 genes. ``X`` holds log-normalised values (scanpy's ``.raw``,
    ``log1p`` of counts per 10,000) as a sparse matrix; ``obs["cell_type"]`` holds the 10
    FACS-sorted populations (``bulk_labels`` in scanpy). The scaled matrix and the embeddings that
    scanpy ships (computed on all cells) are dropped so that nothing fit on the whole data set can
    leak into a cross-validation.
    """
    full = sc.datasets.pbmc68k_reduced()
    raw = full.raw.to_adata()
    X = raw.X if sp.issparse(raw.X) else sp.csr_matrix(raw.X)
    obs = full.obs[["bulk_labels", "n_genes", "n_counts", "percent_mito"]].copy()
    obs[LABELS_KEY] = obs["bulk_labels"].astype("category")
    adata = ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=raw.var_names)
    )
    adata.uns["cellformer_dataset"] = {
        "name": "pbmc68k_reduced",
        "X": "log-normalised (log1p of counts per 10,000)",
        "labels": "FACS-sorted populations (Zheng et al. 2017)",
    }
    return adata


def _find_mtx_dir(paths: list[str]) -> Path:
    for p in paths:
        if Path(p).name in ("matrix.mtx", "matrix.mtx.gz"):
            return Path(p).parent
    raise MissingFileError(
        "The PBMC3k archive has no 'matrix.mtx'; the cached download looks incomplete. Delete the "
        "'pbmc3k_filtered_gene_bc_matrices*' entries in cellformer.datasets.data_dir() and retry."
    )


def pbmc3k() -> ad.AnnData:
    """10x Genomics PBMC3k: raw counts with the scanpy tutorial's cell-type annotation.

    Downloads (once, then from the cache in :func:`cellformer.datasets.data_dir`) the 10x filtered
    count matrices and scanpy's processed PBMC3k file, and joins them by cell barcode.

    Returns
    -------
    AnnData with the 2,638 annotated cells × all 32,738 genes: ``layers["counts"]`` holds raw UMI
    counts, ``X`` log-normalised values (``log1p`` of counts per 10,000, library size over all
    genes) and ``obs["cell_type"]`` the annotation (8 types).

    Notes
    -----
    The annotation is the tutorial's: Louvain clusters named by marker genes. It is a curated
    labelling of this data set, but it was derived from clusters of the same cells, so benchmark
    results on it are optimistic compared with independently labelled data (e.g. FACS labels in
    :func:`~cellformer.datasets.pbmc68k_reduced`).
    """
    needed = ("pbmc3k_filtered_gene_bc_matrices.tar.gz", "pbmc3k_processed.h5ad")
    try:
        paths = fetch(needed[0], processor=pooch.Untar(extract_dir=needed[0].split(".")[0]))
        processed_path = fetch(needed[1])
    except DamagedFileError:
        raise
    except DownloadError as err:
        raise DownloadError(
            f"pbmc3k() needs two files, {needed[0]} and {needed[1]} "
            f"(both in {data_dir()} to work offline).\n{err}"
        ) from err
    try:
        counts = sc.read_10x_mtx(_find_mtx_dir(paths), var_names="gene_symbols", make_unique=True)
    except (OSError, ValueError, EOFError) as err:
        raise damaged(needed[0], err) from err
    try:
        processed = ad.read_h5ad(processed_path)
    except (OSError, KeyError, ValueError) as err:
        raise damaged(needed[1], err) from err
    if "louvain" not in processed.obs:
        raise ParameterError(
            "The processed PBMC3k file has no obs['louvain'] annotation; the cached copy is not the "
            "expected file. Delete 'pbmc3k_processed.h5ad' in cellformer.datasets.data_dir() and retry."
        )
    common = processed.obs_names.intersection(counts.obs_names)
    if len(common) == 0:
        raise ParameterError(
            "No cell barcode is shared between the PBMC3k counts and its annotation; the cached "
            "files do not belong together. Delete them in cellformer.datasets.data_dir() and retry."
        )
    adata = counts[common].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
    adata.obs[LABELS_KEY] = pd.Categorical(processed.obs.loc[common, "louvain"].astype(str))
    adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)
    adata.uns["cellformer_dataset"] = {
        "name": "pbmc3k",
        "X": "log-normalised (log1p of counts per 10,000)",
        "labels": "scanpy tutorial annotation (named Louvain clusters)",
    }
    return adata


def load(path: str | Path | None = None) -> ad.AnnData:
    """Read an ``.h5ad`` file, or the embedded default (:func:`~cellformer.datasets.pbmc68k_reduced`) when ``path`` is None."""
    if path is None:
        return pbmc68k_reduced()
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"No such file: '{path}'. Pass the path of an .h5ad file.")
    if path.suffix != ".h5ad":
        raise ParameterError(
            f"'{path}' is not an .h5ad file. Convert it first, e.g. with scanpy "
            "(sc.read_10x_mtx / sc.read_csv ... then adata.write_h5ad)."
        )
    return ad.read_h5ad(path)
