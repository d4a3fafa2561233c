"""Structured pruning that shrinks tensors: FFN hidden units and attention heads are removed.

A removed unit disappears from every parameter that carries it — weights and biases, and for
:class:`~cellformer.nn.BayesianLinear` the means *and* the variance parameters — so the pruned
layer is a smaller layer, not a masked one, and runs faster.
"""

from __future__ import annotations

import torch
from torch import nn

from cellformer._errors import ParameterError

from ._attention import MultiHeadAttention
from ._bayes import BayesianLinear
from ._encoder import EncoderBlock

__all__ = [
    "ffn_importance",
    "head_importance",
    "prune_ffn",
    "prune_heads",
    "slice_linear",
]

SCORES = ("magnitude", "taylor")


def slice_linear(layer: nn.Module, rows=None, cols=None) -> nn.Module:
    """Copy a linear layer, keeping output units ``rows`` and input units ``cols``."""
    rows = slice(None) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    cols = slice(None) if cols is None else torch.as_tensor(cols, dtype=torch.long)
    if isinstance(layer, BayesianLinear):
        w = layer.weight_mu.detach()[rows][:, cols]
        new = BayesianLinear(w.shape[1], w.shape[0])
        with torch.no_grad():
            new.weight_mu.copy_(w)
            new.weight_rho.copy_(layer.weight_rho.detach()[rows][:, cols])
            new.bias_mu.copy_(layer.bias_mu.detach()[rows])
            new.bias_rho.copy_(layer.bias_rho.detach()[rows])
            new.prior_log_sigma.data = layer.prior_log_sigma.detach().clone()
        if isinstance(layer.prior_log_sigma, nn.Parameter):
            new.prior_log_sigma = nn.Parameter(new.prior_log_sigma.data)
        return new.to(layer.weight_mu.device).train(layer.training)
    if not isinstance(layer, nn.Linear):
        raise ParameterError(f"Cannot slice a {type(layer).__name__}.")
    w = layer.weight.detach()[rows][:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach()[rows])
    return new.to(layer.weight.device).train(layer.training)


def _weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight_mu if isinstance(layer, BayesianLinear) else layer.weight


def _saliency(layer: nn.Module, score: str) -> torch.Tensor:
    """Per-weight importance: ``|w|`` or the first-order Taylor term ``|w · ∂L/∂w|``."""
    w = _weight(layer)
    if score == "magnitude":
        return w.detach().abs()
    if w.grad is None:
        raise ParameterError("score='taylor' needs gradients: run a backward pass first.")
    return (w.detach() * w.grad.detach()).abs()


def ffn_importance(block: EncoderBlock, score: str = "magnitude") -> torch.Tensor:
    """Score each FFN hidden unit: the saliency of its in- and out-weights, summed."""
    if score not in SCORES:
        raise ParameterError(f"score must be one of {SCORES}, got {score!r}.")
    first, second = block.ff[0], block.ff[-1]
    return _saliency(first, score).sum(1) + _saliency(second, score).sum(0)


def head_importance(attn: MultiHeadAttention, score: str = "magnitude") -> torch.Tensor:
    """Score each head: the saliency of its query/key/value rows and output columns."""
    if score not in SCORES:
        raise ParameterError(f"score must be one of {SCORES}, got {score!r}.")
    h, d = attn.n_heads, attn.head_dim
    qkv = _saliency(attn.qkv, score).sum(1).view(3, h, d).sum((0, 2))
    out = _saliency(attn.out, score).sum(0).view(h, d).sum(1)
    return qkv + out


def prune_ffn(block: EncoderBlock, keep) -> None:
    """Keep only the FFN hidden units ``keep`` (in place)."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ParameterError("Keep at least one FFN unit.")
    block.ff[0] = slice_linear(block.ff[0], rows=keep)
    block.ff[-1] = slice_linear(block.ff[-1], cols=keep)


def prune_heads(attn: MultiHeadAttention, keep) -> None:
    """Keep only the heads ``keep`` (in place); the others' projections are removed."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise ParameterError("Keep at least one attention head.")
    h, d = attn.n_heads, attn.head_dim
    channels = (keep[:, None] * d + torch.arange(d)).reshape(-1)  # kept heads' channels
    rows = torch.cat([part * h * d + channels for part in range(3)])  # in q, k and v
    attn.qkv = slice_linear(attn.qkv, rows=rows)
    attn.out = slice_linear(attn.out, cols=channels)
    attn.n_heads = int(keep.numel())
