"""Pre-LayerNorm transformer encoder."""

from __future__ import annotations

import torch
from torch import nn

from cellformer._errors import ParameterError

from ._attention import MultiHeadAttention, TokenNeighbours
from ._bayes import BayesianLinear
from ._dropout import Dropout

__all__ = ["EncoderBlock", "TransformerEncoder"]


class EncoderBlock(nn.Module):
    """``x + Attn(LN(x))`` then ``x + FFN(LN(x))`` with a GELU feed-forward network.

    Parameters
    ----------
    d_model
        Token width.
    n_heads
        Attention heads.
    d_ff
        Hidden units of the feed-forward network.
    dropout
        Dropout on the residual branches and inside the FFN.
    attention
        Attention kernel name (see :data:`cellformer.nn.ATTENTION`).
    attention_dropout
        Dropout on the attention probabilities. On CPU any non-zero value disables the fused
        SDPA kernel and costs about 5× in speed at 256 tokens, hence the default 0.
    attention_options
        Keyword arguments of the attention kernel.
    bayesian_ffn
        Make the FFN's two linear layers :class:`~cellformer.nn.BayesianLinear`.
    head_dim
        Width of a head (default ``d_model // n_heads``; see :class:`MultiHeadAttention`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attention: str = "dense",
        attention_dropout: float = 0.0,
        attention_options: dict | None = None,
        bayesian_ffn: bool = False,
        head_dim: int | None = None,
    ):
        super().__init__()
        linear = BayesianLinear if bayesian_ffn else nn.Linear
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(
            d_model, n_heads, attention_dropout, attention, attention_options, head_dim
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            linear(d_model, d_ff),
            nn.GELU(),
            Dropout(dropout),
            linear(d_ff, d_model),
        )
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        neighbours: TokenNeighbours | None = None,
    ) -> torch.Tensor:
        """Transform ``x`` ``(batch, tokens, d_model)``; padded tokens are never attended to."""
        x = x + self.drop(self.attn(self.norm1(x), padding_mask, neighbours))
        return x + self.drop(self.ff(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`~cellformer.nn.EncoderBlock` with a final LayerNorm.

    Parameters
    ----------
    d_model, n_heads, d_ff, dropout, attention, attention_dropout, attention_options, bayesian_ffn
        See :class:`~cellformer.nn.EncoderBlock`.
    n_layers
        Number of blocks.
    layer_sizes
        ``[(n_heads, d_ff), ...]`` per block, for pruned stacks (heads keep the width
        ``d_model // n_heads`` of the unpruned model); overrides ``n_heads`` / ``d_ff`` per block.
    final_norm
        End with a LayerNorm (pre-LN stacks need one somewhere after the last block; pass
        ``False`` to normalise after pooling instead).
    head_dim
        Width of a head (default ``d_model // n_heads``; scBERT's Performer uses 64 with
        ``d_model=200`` and 10 heads).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int,
        dropout: float = 0.1,
        attention: str = "dense",
        attention_dropout: float = 0.0,
        final_norm: bool = True,
        attention_options: dict | None = None,
        bayesian_ffn: bool = False,
        layer_sizes: list[tuple[int, int]] | None = None,
        head_dim: int | None = None,
    ):
        super().__init__()
        if head_dim is None and d_model % n_heads:
            raise ParameterError(f"n_heads={n_heads} must divide d_model={d_model}.")
        if layer_sizes is None:
            layer_sizes = [(n_heads, d_ff)] * n_layers
        if len(layer_sizes) != n_layers:
            raise ParameterError(
                f"layer_sizes has {len(layer_sizes)} entries for {n_layers} layers."
            )
        self.layers = nn.ModuleList(
            EncoderBlock(
                d_model,
                heads,
                ff,
                dropout,
                attention,
                attention_dropout,
                attention_options,
                bayesian_ffn,
                head_dim=head_dim or d_model // n_heads,
            )
            for heads, ff in layer_sizes
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        neighbours: TokenNeighbours | None = None,
    ) -> torch.Tensor:
        """Encode ``x`` ``(batch, tokens, d_model)`` (``neighbours`` for sparse attention)."""
        for layer in self.layers:
            x = layer(x, padding_mask, neighbours)
        return self.norm(x)
