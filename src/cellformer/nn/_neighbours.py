"""Softmax attention over a per-token list of key positions (a sparse attention pattern).

Each query row attends to ``slots`` key positions given by an index, with a validity mask. Keys
and values are gathered in chunks of query rows inside a custom autograd function that saves
only the inputs and the ``(rows, heads, slots)`` probabilities, and gathers again in the
backward pass, so memory is ``O(tokens × slots)``: no ``tokens × tokens`` tensor exists, forward
or backward.
"""

from __future__ import annotations

import torch

__all__ = ["neighbour_attention"]

#: Bytes of gathered keys (or values) per chunk of query rows; small enough to stay in cache.
CHUNK_BYTES = 1 << 21  # ~160 query rows at 51 slots × 64 channels: fastest measured


def _chunk_rows(slots: int, width: int, itemsize: int) -> int:
    return max(1, CHUNK_BYTES // max(1, slots * width * itemsize))


class _NeighbourAttention(torch.autograd.Function):
    """``out[n] = Σ_s softmax_s(q[n]·k[index[n, s]] · scale) v[index[n, s]]`` over valid slots.

    ``q, k, v``: ``(rows, heads, head_dim)`` (rows = all tokens of all cells, flattened);
    ``index``: ``(rows, slots)`` rows of ``k``/``v``; ``valid``: ``(rows, slots)``, at least one
    True per row. Products are broadcast multiplies and sums over ``(rows, slots, heads, dim)``
    chunks (measured faster on CPU than einsum, which copies the gathered block for ``bmm``).
    """

    @staticmethod
    def forward(ctx, q, k, v, index, valid, scale: float, dropout: float):
        n_rows, n_heads, dim = q.shape
        slots = index.shape[1]
        out = q.new_empty(n_rows, n_heads, dim)
        probs = q.new_empty(n_rows, slots, n_heads)
        keep = None
        if dropout > 0:
            keep = torch.rand(n_rows, slots, n_heads, device=q.device) >= dropout
        step = _chunk_rows(slots, n_heads * dim, q.element_size())
        blocked = ~valid
        for start in range(0, n_rows, step):
            rows = slice(start, start + step)
            idx = index[rows].reshape(-1)
            n = idx.shape[0] // slots
            kg = k.index_select(0, idx).view(n, slots, n_heads, dim)
            scores = (kg * q[rows, None]).sum(-1).mul_(scale)  # (n, slots, heads)
            scores.masked_fill_(blocked[rows, :, None], float("-inf"))
            p = torch.softmax(scores, dim=1)
            probs[rows] = p
            if keep is not None:
                p = p * keep[rows] / (1.0 - dropout)
            vg = v.index_select(0, idx).view(n, slots, n_heads, dim)
            out[rows] = (p.unsqueeze(-1) * vg).sum(1)
        ctx.save_for_backward(q, k, v, index, probs, keep)
        ctx.scale, ctx.dropout = scale, dropout
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, index, probs, keep = ctx.saved_tensors
        scale, dropout = ctx.scale, ctx.dropout
        n_rows, n_heads, dim = q.shape
        slots = index.shape[1]
        grad_out = grad_out.contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        step = _chunk_rows(slots, n_heads * dim, q.element_size())
        for start in range(0, n_rows, step):
            rows = slice(start, start + step)
            idx = index[rows].reshape(-1)
            n = idx.shape[0] // slots
            p = probs[rows]  # (n, slots, heads)
            go = grad_out[rows, None]  # (n, 1, heads, dim)
            vg = v.index_select(0, idx).view(n, slots, n_heads, dim)
            dp = (go * vg).sum(-1)
            p_used = p
            if keep is not None:
                m = keep[rows] / (1.0 - dropout)
                p_used, dp = p * m, dp * m
            dv.index_add_(0, idx, (p_used.unsqueeze(-1) * go).view(-1, n_heads, dim))
            ds = p * (dp - (p * dp).sum(1, keepdim=True))
            ds.mul_(scale)
            kg = k.index_select(0, idx).view(n, slots, n_heads, dim)
            dq[rows] = (ds.unsqueeze(-1) * kg).sum(1)
            dk.index_add_(0, idx, (ds.unsqueeze(-1) * q[rows, None]).view(-1, n_heads, dim))
        return dq, dk, dv, None, None, None, None


def neighbour_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    dropout: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of each query token over its own list of key tokens.

    Parameters
    ----------
    q, k, v
        ``(batch, tokens, heads, head_dim)``.
    index
        ``(batch, tokens, slots)``: positions (within the same cell) of the keys each query may
        attend to.
    valid
        ``(batch, tokens, slots)``: which slots are real; every row needs at least one.
    dropout
        Dropout on the attention probabilities (renormalised by ``1 / (1 - dropout)``).
    scale
        Score scale; ``head_dim ** -0.5`` by default.

    Returns
    -------
    ``(batch, tokens, heads, head_dim)``.
    """
    b, t, h, d = q.shape
    if scale is None:
        scale = d**-0.5
    offsets = torch.arange(b, device=index.device).view(b, 1, 1) * t
    flat = (index + offsets).reshape(b * t, -1)
    out = _NeighbourAttention.apply(
        q.reshape(b * t, h, d),
        k.reshape(b * t, h, d),
        v.reshape(b * t, h, d),
        flat,
        valid.reshape(b * t, -1),
        scale,
        dropout,
    )
    return out.view(b, t, h, d)
