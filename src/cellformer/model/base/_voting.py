"""Majority voting over an over-clustering of the query (CellTypist's ``--majority-voting``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["HETEROGENEOUS", "majority_vote", "over_cluster", "over_clustering_resolution"]

#: Label of clusters whose majority label is below ``min_prop`` (as in CellTypist).
HETEROGENEOUS = "Heterogeneous"


def over_clustering_resolution(n_cells: int) -> float:
    """Leiden resolution for an over-clustering: more clusters for more cells.

    The same steps as CellTypist's default (5 below 5,000 cells, then 10, 15, 20, 25 up to
    200,000 cells, 30 beyond).
    """
    for limit, resolution in ((5_000, 5), (20_000, 10), (40_000, 15), (100_000, 20), (200_000, 25)):
        if n_cells < limit:
            return float(resolution)
    return 30.0


def over_cluster(
    latent: np.ndarray, resolution: float | None = None, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Over-cluster cells: Leiden on a kNN graph of their embedding (scanpy, igraph flavour).

    Parameters
    ----------
    latent
        ``(cells, d)`` embedding, e.g. a model's latent representation.
    resolution
        Leiden resolution; default :func:`over_clustering_resolution`.
    n_neighbors
        Neighbours of the kNN graph.
    seed
        Random state of the graph and of Leiden.

    Returns
    -------
    Cluster names (strings), one per cell.
    """
    import anndata as ad
    import scanpy as sc

    latent = np.asarray(latent, dtype=np.float32)
    if latent.shape[0] < 3:
        return np.zeros(latent.shape[0], dtype=int).astype(str)
    tmp = ad.AnnData(obs=pd.DataFrame(index=np.arange(latent.shape[0]).astype(str)))
    tmp.obsm["X_latent"] = latent
    n_neighbors = min(n_neighbors, latent.shape[0] - 1)
    sc.pp.neighbors(
        tmp,
        n_neighbors=n_neighbors,
        use_rep="X_latent",
        random_state=seed,
        transformer=_ApproximateKnn(n_neighbors, seed) if latent.shape[0] >= 8192 else None,
    )
    if resolution is None:
        resolution = over_clustering_resolution(latent.shape[0])
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
        key_added="clusters",
    )
    return tmp.obs["clusters"].astype(str).to_numpy()


class _ApproximateKnn(BaseEstimator, TransformerMixin):
    """pynndescent's approximate kNN graph with scanpy's defaults, as a scipy CSR *matrix*.

    scanpy uses pynndescent from 8,192 cells on; recent pynndescent returns a ``csr_array``,
    which scanpy 1.11 cannot read (``getnnz``): majority voting failed on every query of that
    size. The graph is the same.
    """

    def __init__(self, n_neighbors: int, seed: int):
        self.n_neighbors = n_neighbors
        self.seed = seed

    def fit(self, x, y=None):
        """Nothing to fit apart from the graph (see :meth:`fit_transform`)."""
        return self

    def fit_transform(self, x, y=None):
        import scipy.sparse as sp
        from pynndescent import PyNNDescentTransformer

        n = x.shape[0]
        knn = PyNNDescentTransformer(
            n_neighbors=self.n_neighbors,
            metric="euclidean",
            random_state=self.seed,
            n_trees=min(64, 5 + round(n**0.5 / 20.0)),  # UMAP's defaults, as scanpy's
            n_iters=max(5, round(np.log2(n))),
        )
        return sp.csr_matrix(knn.fit_transform(x))


def majority_vote(labels, clusters, min_prop: float = 0.0) -> np.ndarray:
    """Give every cell its cluster's most frequent label.

    Parameters
    ----------
    labels
        Per-cell labels.
    clusters
        Per-cell cluster names.
    min_prop
        A cluster whose most frequent label has a smaller share is labelled
        ``"Heterogeneous"``. Ties go to the label that sorts first.

    Returns
    -------
    Array of labels (object dtype), one per cell.
    """
    frame = pd.DataFrame({"label": np.asarray(labels).astype(str), "cluster": np.asarray(clusters)})
    if len(frame) == 0:
        return np.array([], dtype=object)
    counts = frame.groupby(["cluster", "label"], observed=True).size().reset_index(name="n")
    counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
    top = counts.drop_duplicates("cluster").set_index("cluster")
    share = top["n"] / frame.groupby("cluster", observed=True).size()
    winner = top["label"].where(share >= min_prop, HETEROGENEOUS)
    return frame["cluster"].map(winner).to_numpy(dtype=object)
