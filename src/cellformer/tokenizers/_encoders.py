"""Token embeddings: gene identity (F_G), expression (F_E), positions, and their reduction."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellformer._errors import ParameterError
from cellformer.nn import Dropout

from ._config import TokenizerConfig
from ._parts import EXPRESSION
from ._tokens import N_SPECIAL, Tokens

__all__ = ["ExpressionEncoder", "GeneEncoder", "TokenEmbedding", "project_table"]

logger = logging.getLogger("cellformer")


def project_table(table: pd.DataFrame, genes, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a gene-embedding table for ``genes``, reduced to ``d_model`` columns by PCA.

    Returns ``(vectors, found)``: ``vectors`` ``(len(genes), d_model)`` (zeros where a gene is
    missing from the table) and the boolean ``found``. Tables narrower than ``d_model`` (or with
    fewer matched genes than ``d_model``) are zero-padded. The vectors are scaled to unit mean norm.
    """
    if not isinstance(table, pd.DataFrame):
        raise ParameterError("gene_embeddings must be a DataFrame indexed by gene name.")
    if table.index.has_duplicates:
        raise ParameterError("gene_embeddings has duplicated gene names in its index.")
    values = table.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ParameterError("gene_embeddings contains NaN or infinite values.")
    index = pd.Index(table.index.astype(str))
    pos = index.get_indexer(pd.Index([str(g) for g in genes]))
    found = pos >= 0
    if not found.any():
        raise ParameterError(
            "None of the model's genes are in the gene_embeddings index "
            f"(e.g. {list(genes[:3])} vs {list(index[:3])}). Use the same gene naming."
        )
    rows = values[pos[found]]
    n_components = min(d_model, *rows.shape)
    if rows.shape[1] > n_components:
        from sklearn.decomposition import PCA

        rows = PCA(n_components=n_components, random_state=0).fit_transform(rows)
    else:
        rows = rows - rows.mean(0)
    rows = np.pad(rows, ((0, 0), (0, d_model - rows.shape[1])))
    rows = rows / max(np.linalg.norm(rows, axis=1).mean(), 1e-12)
    out = np.zeros((len(pos), d_model), dtype=np.float32)
    out[found] = rows
    logger.info("gene_embeddings cover %d of %d genes.", int(found.sum()), len(pos))
    return out, found


class GeneEncoder(nn.Module):
    """F_G: an embedding for every token id (special tokens, genes, context tokens).

    Parameters
    ----------
    vocab_size
        Number of token ids.
    d_model
        Embedding width.
    table
        Optional ``(n_genes, d_model)`` vectors for the gene ids (``N_SPECIAL ...``), and
        ``found`` telling which genes have one; others (and special tokens) stay learned.
    freeze
        Keep the table vectors fixed (only the missing genes' vectors are learned).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        table: tuple[np.ndarray, np.ndarray] | None = None,
        freeze: bool = False,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.freeze = freeze and table is not None
        if table is not None:
            vectors, found = table
            n = len(found)
            ids = torch.arange(N_SPECIAL, N_SPECIAL + n)[torch.as_tensor(found)]
            with torch.no_grad():
                self.embedding.weight[ids] = torch.as_tensor(vectors[found])
            frozen = torch.zeros(vocab_size, dtype=torch.bool)
            frozen[ids] = True
            self.register_buffer("frozen", frozen if self.freeze else torch.zeros_like(frozen))
        else:
            self.register_buffer("frozen", torch.zeros(vocab_size, dtype=torch.bool))
        if self.freeze:
            self.embedding.weight.register_hook(self._mask_frozen_grad)

    def _mask_frozen_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.frozen[:, None], 0.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(cells, tokens) → (cells, tokens, d_model)``."""
        return self.embedding(ids)


class ExpressionEncoder(nn.Module):
    """F_E: an embedding of each gene token's expression (zero for special tokens and padding).

    The layers and the embedding are the registered part's (:data:`EXPRESSION`):
    ``"none"`` returns ``None``; bins use an embedding table (one row per bin plus a ``<mask>``
    row, for pretraining); ``"continuous"`` maps the log value with a linear layer or a
    1 → d → d GELU MLP. Where ``tokens.value_mask`` is set (pretraining), the value is replaced
    by the ``<mask>`` bin or a learned mask vector.
    """

    def __init__(self, config: TokenizerConfig, d_model: int):
        super().__init__()
        self.kind = config.expression
        self.part = EXPRESSION[config.expression]
        self.mask_bin = config.n_bins
        self.part.build(self, config, d_model)

    def forward(self, tokens: Tokens) -> torch.Tensor | None:
        """``(cells, tokens, d_model)`` or ``None``."""
        out = self.part.embed(self, tokens)
        if out is None:
            return None
        return out * tokens.gene_mask.unsqueeze(-1).to(out.dtype)


class TokenEmbedding(nn.Module):
    """Gene identity + expression (+ position) → one vector per token.

    Parameters
    ----------
    config
        The tokenizer's config (expression encoder, reduction, positions).
    vocab_size
        Token ids, as :attr:`Tokenizer.vocab_size`.
    max_tokens
        Longest sequence (for the positional embedding).
    d_model
        Token width.
    table, freeze
        See :class:`GeneEncoder`.
    dropout
        Dropout on the token embeddings.
    """

    def __init__(
        self,
        config: TokenizerConfig,
        vocab_size: int,
        max_tokens: int,
        d_model: int,
        table=None,
        freeze: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = config
        self.gene = GeneEncoder(vocab_size, d_model, table=table, freeze=freeze)
        self.expression = ExpressionEncoder(config, d_model)
        self.position = nn.Embedding(max_tokens, d_model) if config.use_positions else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)
        self.reduce = config.reduce if EXPRESSION[config.expression].has_value else "sum"
        concat = self.reduce == "concat"
        self.project = nn.Linear(2 * d_model, d_model) if concat else None
        # a LayerNorm would erase the magnitude that "product" puts into each token
        # paired time points: which segment a token belongs to (current 0, previous 1)
        self.segment = nn.Embedding(2, d_model) if config.paired else None
        normed = config.embedding_norm and self.reduce != "product"
        self.norm = nn.LayerNorm(d_model) if normed else nn.Identity()
        self.drop = Dropout(dropout)

    def forward(self, tokens: Tokens) -> torch.Tensor:
        """``(cells, tokens, d_model)``."""
        h = self.gene(tokens.ids)
        e = self.expression(tokens)
        if e is not None:
            if self.reduce == "concat":
                h = self.project(torch.cat([h, e], dim=-1))
            elif self.reduce == "product":
                h = h * (1 + e)
            else:
                h = h + e
        if self.position is not None:
            n = tokens.ids.shape[1]
            h = h + self.position(torch.arange(n, device=h.device))
        if self.segment is not None and tokens.segments is not None:
            h = h + self.segment(tokens.segments)
        return self.drop(self.norm(h))
