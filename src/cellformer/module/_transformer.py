"""Transformer classifier: tokenizer → token embedding → encoder → pooling → head."""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

import numpy as np
import torch
from torch import nn

from cellformer._errors import ParameterError
from cellformer.nn import (
    ATTENTION,
    BayesianLinear,
    EncoderConfig,
    GeneGraph,
    TokenNeighbours,
    TransformerEncoder,
    get_encoder_config,
)
from cellformer.pp import gene_knn_graph
from cellformer.tokenizers import N_SPECIAL, TokenEmbedding, Tokenizer, TokenizerConfig

from ._classifier import ClassifierModuleBase, LinearPathModuleMixin

logger = logging.getLogger("cellformer")

__all__ = ["TransformerModule"]


class TransformerModule(LinearPathModuleMixin, ClassifierModuleBase):
    """A cell-type classifier over gene tokens.

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of cell types.
    gene_names
        The genes, in input order (the tokenizer's vocabulary).
    tokenizer
        Preset name, dict or :class:`~cellformer.tokenizers.TokenizerConfig`.
    input_kind
        ``"counts"`` or ``"lognorm"``.
    n_batches
        Batch categories (for batch context tokens).
    encoder
        The network: an :class:`~cellformer.nn.EncoderConfig`, a preset name or a dict of its
        fields (``None``: the default). Its ``pooling`` ``None`` becomes ``"mean"``, or
        ``"genes"`` when every gene is a token (``drop_zeros=False``).
    gene_table
        ``(vectors, found)`` from :func:`~cellformer.tokenizers.project_table`, or ``None``.
    freeze_gene_table
        Keep the table vectors fixed.
    class_balance
        Weight the loss by inverse class frequency on the training cells.
    **encoder_options
        :class:`~cellformer.nn.EncoderConfig` fields, applied over ``encoder``
        (``d_model=32``, ``attention="performer"`` ...).
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        gene_names,
        tokenizer: str | dict | TokenizerConfig = "default",
        input_kind: Literal["counts", "lognorm"] = "lognorm",
        n_batches: int = 0,
        encoder: str | dict | EncoderConfig | None = None,
        gene_table=None,
        freeze_gene_table: bool = False,
        class_balance: bool = True,
        **encoder_options,
    ):
        config = get_encoder_config(encoder, **encoder_options)
        super().__init__(
            n_input, n_labels, input_kind, class_balance=class_balance, kl_weight=config.kl_weight
        )
        self.tokenizer = Tokenizer(gene_names, tokenizer, n_batches=n_batches)
        tokens = self.tokenizer.config
        if config.pooling is None:  # a mean over mostly constant zero tokens says little
            config = config.replace(pooling="mean" if tokens.drop_zeros else "genes")
        self.config = config
        self.token_dropout = config.token_dropout
        kernel = ATTENTION[config.attention]
        needs_graph = getattr(kernel, "needs_gene_graph", False)
        if tokens.paired and (config.pooling == "genes" or needs_graph):
            raise ParameterError(
                "A paired (two time point) tokenizer needs pooling='mean' or 'cls' and attention "
                "without a gene graph: the gene-wise readout and the gene graph are per gene."
            )
        if config.pooling == "cls" and not tokens.cls_token:
            raise ParameterError("pooling='cls' needs a tokenizer with cls_token=True.")
        if tokens.gene_encoder == "table" and gene_table is None:
            raise ParameterError("gene_encoder='table' needs gene_embeddings (a DataFrame).")
        self.pooling = config.pooling
        options = dict(config.attention_options or {})
        self.gene_graph = None
        self.knn_k = None
        if needs_graph:
            self.knn_k = int(options.pop("k", 8))
            max_degree = int(options.pop("max_degree", 3 * self.knn_k))
            self.gene_graph = GeneGraph(n_input, 1 + max_degree)
        d_model = config.d_model
        self.embed = TokenEmbedding(
            tokens,
            vocab_size=self.tokenizer.vocab_size,
            max_tokens=self.tokenizer.max_tokens,
            d_model=d_model,
            table=gene_table,
            freeze=freeze_gene_table,
            dropout=config.dropout,
        )
        # the residual stream is pooled first, then normalised: a per-token LayerNorm before
        # pooling would discard how strongly each gene token speaks
        self.encoder = TransformerEncoder(
            d_model,
            config.n_heads,
            config.n_layers,
            config.ff_units,
            config.dropout,
            config.attention,
            config.attention_dropout,
            final_norm=config.token_norm,
            attention_options=options,
            bayesian_ffn=config.bayesian_ffn,
            layer_sizes=config.layer_sizes,
            head_dim=config.head_dim,
        )
        if config.bayesian_ffn:
            for block in self.encoder.layers:
                for layer in block.ff:
                    if isinstance(layer, BayesianLinear):
                        layer.prior_log_sigma.fill_(math.log(config.prior_sigma))
        self.readout = None
        if config.pooling == "genes":
            self.readout = nn.ModuleDict(
                {"token": nn.Linear(d_model, 1), "genes": nn.Linear(n_input, d_model)}
            )
        self.norm = nn.LayerNorm(d_model)
        self._init_head(
            d_model,
            n_input,
            n_labels,
            config.head,
            config.dropout,
            config.prior_sigma,
            config.init_sigma,
            config.linear_path,
        )

    def fit_statistics(self, X, kind: str, indices, library=None) -> None:
        """Fit the tokenizer statistics and, for graph attention (``"knn"``), the gene graph.

        ``X`` is the cells × genes matrix (``kind``: ``"counts"`` or ``"lognorm"``) and
        ``indices`` the training cells: nothing else is looked at. ``library``: library sizes of
        all rows of ``X`` (see ``iter_lognorm_chunks``).
        """
        self.tokenizer.fit(X, kind, indices, library=library)
        if self.gene_graph is None:
            return
        genes = np.flatnonzero(self.tokenizer.gene_mask.cpu().numpy())
        start = time.perf_counter()
        neighbours = gene_knn_graph(
            X,
            kind,
            indices,
            k=self.knn_k,
            max_degree=self.gene_graph.neighbours.shape[1] - 1,
            genes=genes,
            library=library,
        )
        self.gene_graph.set(neighbours)
        degree = (neighbours[genes] >= 0).sum(1) - 1
        logger.info(
            "Gene kNN graph on %d training cells: %d genes, median degree %d, in %.1f s.",
            len(indices),
            len(genes),
            int(np.median(degree)),
            time.perf_counter() - start,
        )

    def tokens(self, x: torch.Tensor, batch_index: torch.Tensor | None = None):
        """Tokenise log-normalised expression (a random order is seeded at inference)."""
        generator = None
        if not self.training:  # (only an order with random keys draws from it)
            generator = torch.Generator(device=x.device).manual_seed(0)
        batch = batch_index.view(-1) if batch_index is not None else None
        if self.tokenizer.n_batches == 0:
            batch = None
        subsample = self.tokenizer.config.train_max_length if self.training else None
        return self.tokenizer(x, batch=batch, generator=generator, subsample=subsample)

    def hidden(self, x: torch.Tensor, batch_index: torch.Tensor | None = None):
        """Return the encoder's residual stream ``(cells, tokens, d_model)`` and the tokens."""
        tokens = self.tokens(x, batch_index)
        if self.training and self.token_dropout > 0:
            drop = torch.rand(tokens.ids.shape, device=x.device) < self.token_dropout
            tokens.padding_mask = tokens.padding_mask | (drop & tokens.gene_mask)
        h = self.encoder(self.embed(tokens), tokens.padding_mask, self.neighbours(tokens))
        return h, tokens

    def neighbours(self, tokens) -> TokenNeighbours | None:
        """Graph neighbours of each token (``None`` unless the kernel needs a gene graph)."""
        if self.gene_graph is None:
            return None
        genes = torch.where(tokens.gene_mask, tokens.ids - N_SPECIAL, -1)
        return self.gene_graph.token_neighbours(genes, tokens.padding_mask, tokens.n_prefix)

    def encode(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled, normalised encoder output ``(cells, d_model)``: the cell embedding."""
        h, tokens = self.hidden(x, batch_index)
        return self.pool(h, tokens)

    def pool(self, h: torch.Tensor, tokens) -> torch.Tensor:
        """Pool the encoder output ``h`` of ``tokens`` into normalised cell embeddings."""
        if self.pooling == "cls":
            return self.norm(h[:, 0])
        if self.pooling == "genes":
            real = tokens.gene_mask & ~tokens.padding_mask
            score = self.readout["token"](h).squeeze(-1).masked_fill(~real, 0.0)
            genes = torch.where(real, tokens.ids - N_SPECIAL, 0)
            per_gene = h.new_zeros(h.shape[0], self.n_input).scatter_add_(1, genes, score)
            return self.norm(self.readout["genes"](per_gene))
        weights = (tokens.gene_mask & ~tokens.padding_mask).to(h.dtype).unsqueeze(-1)
        return self.norm((h * weights).sum(1) / weights.sum(1).clamp_min(1.0))

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits of the transformer path."""
        return self.head(z)

    def inference(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> dict:
        """Cell embedding ``z`` (the encoder's pooled output) and logits (+ the linear path)."""
        return self._add_paths(super().inference(x, batch_index), x)

    #: Layer-wise learning-rate decay (``None``: one learning rate); see ``parameter_groups``.
    lr_decay: float | None = None

    def parameter_groups(self, lr: float) -> list[dict]:
        """Trainable parameters grouped for the optimiser.

        Without :attr:`lr_decay` one group at ``lr``. With it, the head, readout and final norm
        get ``lr``, encoder block ``i`` of ``L`` gets ``lr * decay**(L - i)`` and the token
        embedding ``lr * decay**(L + 1)``: layers nearer the input move less in fine-tuning.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        if self.lr_decay is None:
            return [{"params": trainable, "lr": lr}]
        n = len(self.encoder.layers)
        assigned: set[int] = set()
        groups = []
        parts = [(self.embed, n + 1)] + [(b, n - i) for i, b in enumerate(self.encoder.layers)]
        for part, depth in parts:
            params = [p for p in part.parameters() if p.requires_grad]
            assigned.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": lr * self.lr_decay**depth})
        rest = [p for p in trainable if id(p) not in assigned]
        return [*groups, {"params": rest, "lr": lr}]

    @property
    def layer_sizes(self) -> list[tuple[int, int]]:
        """``(heads, FFN units)`` of each encoder block."""
        return [(b.attn.n_heads, b.ff[0].out_features) for b in self.encoder.layers]
