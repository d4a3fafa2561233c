"""scGPT's value binning, from a cell's expression, token for token.

scGPT (Cui et al. 2024) turns a cell into ``<cls>`` followed by its expressed genes in the
data's gene order; each gene's value is its bin among the cell's non-zero values: the edges
are the ``n_bins - 1`` evenly spaced quantiles of those values, a value takes the bins between
``digitize(left)`` and ``digitize(right)`` and, where quantiles tie (many genes with one
count), one of the tied bins drawn uniformly at random. Cells with more genes than the
model's input size keep ``<cls>`` and a random subset of the rest. ``<cls>`` and padding carry
the checkpoint's ``pad_value``.

The draws are scGPT's own arithmetic (float32 values, NumPy quantiles, ``ceil(u * (right -
left) + left)``); where scGPT draws from NumPy's global state on every call, cellformer draws
from a generator seeded by the cell's expressed genes, the order of their values and ``seed``,
so a cell gets the same tokens in any batch, order or session. Pass ``rng`` to :meth:`ScGPTTokenizer.encode` to draw
sequentially from a ``numpy.random.RandomState`` instead (scGPT's own sequence when it is
seeded alike). Bins depend only on the order of a cell's values, so raw counts and
log-normalised values give the same tokens.
"""

from __future__ import annotations

import zlib

import numpy as np

from cellformer._errors import ParameterError

__all__ = ["ScGPTTokenizer", "scgpt_bins"]


def _quantile_digits(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each value's lowest and highest bin among the cell's quantile edges (scGPT's digitize)."""
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    return np.digitize(values, edges), np.digitize(values, edges, right=True)


def scgpt_bins(values: np.ndarray, n_bins: int, uniform: np.ndarray) -> np.ndarray:
    """Return the bins (1 to ``n_bins - 1``) of one cell's positive values, as scGPT draws them.

    Parameters
    ----------
    values
        The cell's non-zero values (float32, scGPT's precision).
    n_bins
        Number of bins including bin 0 (zeros); scGPT's checkpoints use 51.
    uniform
        One uniform number in ``[0, 1)`` per value, spreading values over tied quantiles.
    """
    left, right = _quantile_digits(values, n_bins)
    return _draw(left, right, uniform)


def _draw(left: np.ndarray, right: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    return np.ceil(uniform * (right - left) + left).astype(np.int64)


class ScGPTTokenizer:
    """Token ids and values of cells under scGPT's binned input.

    Parameters
    ----------
    token_ids
        ``(genes,)`` the embedding row of each of the model's genes; ``-1`` for genes the
        vocabulary lacks (they never become tokens).
    cls_id, pad_id
        Embedding rows of ``<cls>`` and ``<pad>``.
    pad_value
        Value of ``<cls>`` and padding (scGPT's ``pad_value``, -2 in its checkpoints).
    n_bins
        Bins including bin 0 (scGPT: 51).
    max_length
        Most tokens per cell, ``<cls>`` included (scGPT's ``max_seq_len``, 1200 for embedding).
    seed
        Seed of the per-cell draws (ties between quantiles, the subset of long cells).
    """

    def __init__(
        self,
        token_ids: np.ndarray,
        cls_id: int,
        pad_id: int,
        pad_value: float = -2.0,
        n_bins: int = 51,
        max_length: int = 1200,
        seed: int = 0,
    ):
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.known = np.flatnonzero(self.token_ids >= 0)
        self.cls_id = int(cls_id)
        self.pad_id = int(pad_id)
        self.pad_value = float(pad_value)
        self.n_bins = int(n_bins)
        self.max_length = int(max_length)
        self.seed = int(seed)
        if self.n_bins < 3:
            raise ParameterError(f"n_bins must be at least 3, got {n_bins}.")
        if self.max_length < 2:
            raise ParameterError(
                f"max_length must leave room for <cls> and one gene (at least 2), got {max_length}."
            )

    def cell(self, row: np.ndarray, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and values of one cell (``<cls>`` first); ``row`` over the model's genes."""
        row = np.nan_to_num(np.asarray(row, dtype=np.float32)[self.known], nan=0.0)
        expressed = np.flatnonzero(row > 0)
        left, right = _quantile_digits(row[expressed], self.n_bins)
        if rng is None:
            # seeded by what the bins depend on (the expressed genes and the order of their
            # values), so counts and log-normalised values of a cell draw alike
            key = b"".join(a.astype(np.int64).tobytes() for a in (expressed, left, right))
            generator = np.random.default_rng([self.seed, zlib.crc32(key)])
            uniform = generator.random(expressed.size)
        else:
            generator = rng
            uniform = rng.random_sample(expressed.size)
        bins = _draw(left, right, uniform)
        ids = self.token_ids[self.known[expressed]]
        if ids.size + 1 > self.max_length:  # keep <cls> and a random subset of the genes
            keep = np.sort(generator.permutation(ids.size)[: self.max_length - 1])
            ids, bins = ids[keep], bins[keep]
        ids = np.concatenate([[self.cls_id], ids])
        vals = np.concatenate([[self.pad_value], bins.astype(np.float32)])
        return ids, vals.astype(np.float32)

    def encode(
        self, values: np.ndarray, rng: np.random.RandomState | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenise cells.

        Parameters
        ----------
        values
            ``(cells, genes)`` expression over the model's genes (NaN: not measured).
        rng
            Draw from this ``RandomState`` cell after cell (``random_sample`` for ties,
            ``permutation`` for subsets) instead of the per-cell seeded generators.

        Returns
        -------
        ``(ids, values, lengths)``: ``(cells, longest)`` token ids padded with ``pad_id``, their
        values (``pad_value`` for ``<cls>`` and padding), each cell's number of tokens.
        """
        cells = [self.cell(row, rng) for row in np.asarray(values)]
        lengths = np.array([len(ids) for ids, _ in cells], dtype=np.int64)
        width = int(lengths.max(initial=1))
        ids = np.full((len(cells), width), self.pad_id, dtype=np.int64)
        vals = np.full((len(cells), width), self.pad_value, dtype=np.float32)
        for i, (cell_ids, cell_values) in enumerate(cells):
            ids[i, : len(cell_ids)] = cell_ids
            vals[i, : len(cell_values)] = cell_values
        return ids, vals, lengths
