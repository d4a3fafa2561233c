"""Gene–gene k-nearest-neighbour graph from training cells, built without any genes × genes matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellformer._errors import ParameterError
from cellformer._utils import subsample

from .stats import iter_lognorm_chunks

__all__ = ["gene_knn_graph"]


def gene_knn_graph(
    X,
    kind: str,
    indices: np.ndarray | None = None,
    k: int = 8,
    max_degree: int | None = None,
    genes: np.ndarray | None = None,
    max_cells: int = 20_000,
    chunk_size: int = 512,
    seed: int = 0,
    library: np.ndarray | None = None,
) -> np.ndarray:
    """Symmetric k-nearest-neighbour graph of genes by cosine similarity of expression.

    Similarities are those of log-normalised expression vectors over the training cells. Each gene
    keeps its ``k`` most similar genes (similarity > 0); the graph is made symmetric by taking the
    union of both directions. Hub genes would otherwise collect hundreds of edges, so an edge is
    kept only if it is among the ``max_degree`` strongest of *both* its ends: this keeps the graph
    symmetric with every degree at most ``max_degree``. Genes that are never expressed have only
    themselves as neighbours.

    Similarities are computed for ``chunk_size`` genes at a time, so memory is
    ``O(chunk_size × n_genes)``: no ``n_genes × n_genes`` matrix is ever held.

    Parameters
    ----------
    X
        Cells × genes (dense, sparse or backed), in the model's gene order.
    kind
        ``"counts"`` or ``"lognorm"``.
    indices
        Training cells (all when ``None``). Fit on training cells only.
    k
        Neighbours per gene before symmetrisation (self not counted).
    max_degree
        Most neighbours per gene after symmetrisation (default ``3 * k``).
    genes
        Only these gene indices take part (e.g. the HVGs); other genes get themselves only.
    max_cells
        Similarities use at most this many training cells (a seeded sample).
    chunk_size
        Genes per similarity block.
    seed
        Seed of the cell sample.
    library
        Library sizes of all rows of ``X`` (see ``iter_lognorm_chunks``).

    Returns
    -------
    ``(n_genes, 1 + max_degree)`` int64 array: row ``g`` lists ``g`` itself first, then its
    neighbours by decreasing similarity, padded with ``-1``.
    """
    if k < 1:
        raise ParameterError(f"k must be at least 1, got {k}.")
    max_degree = 3 * k if max_degree is None else max_degree
    if max_degree < k:
        raise ParameterError(f"max_degree={max_degree} must be at least k={k}.")
    n_genes = X.shape[1]
    if indices is None:
        indices = np.arange(X.shape[0])
    indices = np.asarray(indices)
    indices = np.sort(subsample(indices, max_cells, seed))
    genes = np.arange(n_genes) if genes is None else np.asarray(genes)
    blocks = [
        sp.csr_matrix(b)
        for _, b in iter_lognorm_chunks(X, kind, indices, sparse=True, library=library)
    ]
    expr = sp.vstack(blocks).tocsc()[:, genes].astype(np.float32)
    norms = np.sqrt(np.asarray(expr.multiply(expr).sum(axis=0)).ravel())
    unit = (expr @ sp.diags(1.0 / np.maximum(norms, 1e-12))).tocsc()
    unit_t = unit.T.tocsr()

    n = len(genes)
    kk = min(k, n - 1)
    src, dst, sim = [], [], []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = (unit_t[start:stop] @ unit).toarray()  # (chunk, n) cosine similarities
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # self handled apart
        if kk <= 0:
            continue
        top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
        top_sim = np.take_along_axis(block, top, axis=1)
        keep = top_sim > 0
        rows = np.broadcast_to(np.arange(start, stop)[:, None], top.shape)
        src.append(rows[keep])
        dst.append(top[keep])
        sim.append(top_sim[keep])
    edges = _symmetric_capped(
        np.concatenate(src) if src else np.zeros(0, np.int64),
        np.concatenate(dst) if dst else np.zeros(0, np.int64),
        np.concatenate(sim) if sim else np.zeros(0, np.float32),
        n,
        max_degree,
    )
    out = np.full((n_genes, 1 + max_degree), -1, dtype=np.int64)
    out[:, 0] = np.arange(n_genes)
    a, b, s = edges
    order = np.lexsort((-s, a))  # by gene, strongest first
    a, b = a[order], b[order]
    slot = np.arange(len(a)) - np.searchsorted(a, a, side="left")
    out[genes[a], 1 + slot] = genes[b]
    return out


def _symmetric_capped(src, dst, sim, n: int, max_degree: int):
    """Undirected union of directed edges; keep an edge if it ranks ≤ max_degree at both ends."""
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = lo.astype(np.int64) * n + hi
    key, first = np.unique(key, return_index=True)
    lo, hi, sim = lo[first], hi[first], sim[first]
    # both directions, ranked by similarity at each node
    a = np.concatenate([lo, hi])
    b = np.concatenate([hi, lo])
    s = np.concatenate([sim, sim])
    edge = np.concatenate([np.arange(len(lo))] * 2)
    order = np.lexsort((-s, a))
    a_sorted = a[order]
    rank = np.empty(len(a), dtype=np.int64)
    rank[order] = np.arange(len(a)) - np.searchsorted(a_sorted, a_sorted, side="left")
    over = np.bincount(edge, weights=rank >= max_degree, minlength=len(lo))
    keep = (over == 0)[edge]
    return a[keep], b[keep], s[keep]
