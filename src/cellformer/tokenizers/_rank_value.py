"""Geneformer's rank value encoding, from raw counts, token for token.

A cell's counts are divided by its total counts, multiplied by 10,000 and divided by each
gene's median over the pretraining corpus (the checkpoint's ``gene_median_dictionary``); the
detected genes are ranked by that value, highest first, truncated to the model's input size and,
for models whose token dictionary has ``<cls>`` and ``<eos>`` (Geneformer V2), framed by them.
The arithmetic (float64, in this order) and the sort (NumPy's default ``argsort`` of the negated
values, in gene order) are those of Geneformer's ``TranscriptomeTokenizer``, so ties between
genes are broken the same way.
"""

from __future__ import annotations

import numpy as np

from cellformer._errors import ParameterError

__all__ = ["RankValueTokenizer"]

#: Geneformer normalises every cell to this many counts before dividing by the gene medians.
GENEFORMER_TARGET_SUM = 10_000


class RankValueTokenizer:
    """Token ids of cells under Geneformer's rank value encoding.

    Parameters
    ----------
    token_ids
        ``(genes,)`` token id of each of the model's genes; ``-1`` for genes the token dictionary
        lacks (they never become tokens).
    medians
        ``(genes,)`` each gene's non-zero median from the gene median dictionary (ignored where
        ``token_ids`` is ``-1``).
    input_size
        Most tokens per cell, special tokens included (the checkpoint's
        ``max_position_embeddings``).
    pad_id, cls_id, eos_id
        Special token ids; ``cls_id`` and ``eos_id`` ``None`` for models without them (V1).
    """

    def __init__(
        self,
        token_ids: np.ndarray,
        medians: np.ndarray,
        input_size: int,
        pad_id: int = 0,
        cls_id: int | None = None,
        eos_id: int | None = None,
    ):
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.medians = np.asarray(medians, dtype=np.float64)
        self.known = np.flatnonzero(self.token_ids >= 0)
        self.input_size = int(input_size)
        self.pad_id = int(pad_id)
        self.cls_id = cls_id
        self.eos_id = eos_id
        self.special = cls_id is not None and eos_id is not None
        if self.n_gene_tokens < 1:
            raise ParameterError(
                f"The model's input size ({self.input_size}) leaves no room for a gene token "
                f"{'beside <cls> and <eos>' if self.special else ''}: it must be at least "
                f"{3 if self.special else 1}."
            )

    @property
    def n_gene_tokens(self) -> int:
        """Most gene tokens per cell."""
        return self.input_size - (2 if self.special else 0)

    def rank(self, counts: np.ndarray, library: float) -> np.ndarray:
        """Token ids of the detected genes of one cell, highest normalised value first.

        ``counts`` are the cell's counts over the model's genes (NaN: not measured).
        """
        values = np.asarray(counts, dtype=np.float64)[self.known]
        detected = np.flatnonzero(np.nan_to_num(values, nan=0.0) != 0)
        normalised = (
            values[detected] / np.float64(library) * GENEFORMER_TARGET_SUM
        ) / self.medians[self.known[detected]]
        order = np.argsort(-normalised)
        return self.token_ids[self.known[detected]][order][: self.n_gene_tokens]

    def encode(self, counts: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise cells.

        Parameters
        ----------
        counts
            ``(cells, genes)`` raw counts over the model's genes (NaN: not measured).
        library
            ``(cells,)`` each cell's total counts (Geneformer's ``n_counts``).

        Returns
        -------
        ``(ids, lengths)``: ``(cells, longest)`` token ids padded with ``pad_id``, and each
        cell's number of tokens (special tokens included).
        """
        counts = np.asarray(counts)
        library = np.asarray(library, dtype=np.float64).ravel()
        cells = []
        for row, total in zip(counts, library, strict=True):
            genes = self.rank(row, total)
            if self.special:
                genes = np.concatenate([[self.cls_id], genes, [self.eos_id]])
            cells.append(genes)
        lengths = np.array([len(c) for c in cells], dtype=np.int64)
        ids = np.full((len(cells), max(int(lengths.max(initial=1)), 1)), self.pad_id, np.int64)
        for i, c in enumerate(cells):
            ids[i, : len(c)] = c
        return ids, lengths
