"""Multi-head self-attention behind one interface, so that attention kernels are exchangeable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION", "DenseAttention", "MultiHeadAttention"]


class DenseAttention(nn.Module):
    """Softmax attention with :func:`torch.nn.functional.scaled_dot_product_attention`.

    The key-padding mask is passed as a ``(batch, 1, 1, keys)`` boolean view that SDPA broadcasts
    over heads and queries, so no ``(batch, heads, tokens, tokens)`` mask is ever materialised and
    fused (flash / memory-efficient) kernels are used where the hardware has them.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attend over keys that are not padding.

        ``q, k, v``: ``(batch, heads, tokens, head_dim)``; ``padding_mask``: ``(batch, tokens)``,
        True where a token is padding (it is never attended to).
        """
        attn_mask = None
        if padding_mask is not None:
            attn_mask = ~padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )


#: Attention kernels by name; each takes ``dropout`` and is called as ``(q, k, v, padding_mask)``.
ATTENTION: dict[str, type[nn.Module]] = {"dense": DenseAttention}


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: QKV projection, a kernel from :data:`ATTENTION`, projection.

    Heads are split as ``(batch, tokens, heads, head_dim) → (batch, heads, tokens, head_dim)`` (a
    transpose, not a reshape, so tokens never mix across heads).

    Parameters
    ----------
    d_model
        Token width.
    n_heads
        Number of heads; must divide ``d_model``.
    dropout
        Dropout on the attention probabilities.
    attention
        Name of the kernel in :data:`ATTENTION`.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, attention: str = "dense"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}.")
        if attention not in ATTENTION:
            raise ValueError(f"Unknown attention {attention!r}; choose from {sorted(ATTENTION)}.")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.kernel = ATTENTION[attention](dropout=dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, d_model) → (batch, heads, tokens, head_dim)``."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, tokens, head_dim) → (batch, tokens, d_model)``."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` ``(batch, tokens, d_model)``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = self.kernel(
            self.split_heads(q), self.split_heads(k), self.split_heads(v), padding_mask
        )
        return self.out(self.merge_heads(out))
