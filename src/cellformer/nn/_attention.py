"""Multi-head self-attention behind one interface, so that attention kernels are exchangeable.

Every kernel is called as ``kernel(q, k, v, padding_mask, neighbours)`` with ``q, k, v`` of shape
``(batch, heads, tokens, head_dim)`` and returns the same shape. ``padding_mask`` ``(batch,
tokens)`` is True at padding tokens: they are never attended to, and what they hold never changes
the output of real tokens. ``neighbours`` (a :class:`TokenNeighbours`) is used by sparse kernels
only. Dropout acts on the attention probabilities (scaled by ``1 / (1 - p)``) in training only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cellformer._errors import ParameterError

from ._neighbours import neighbour_attention

__all__ = [
    "ATTENTION",
    "register_attention",
    "DenseAttention",
    "GeneGraph",
    "KnnAttention",
    "MultiHeadAttention",
    "PerformerAttention",
    "TokenNeighbours",
]


@dataclass
class TokenNeighbours:
    """Which keys each token may attend to, for sparse attention.

    Attributes
    ----------
    index
        ``(batch, tokens, slots)`` key positions within the same cell.
    valid
        ``(batch, tokens, slots)``, True at real slots (each row has at least one).
    n_global
        Leading tokens (``<cls>``, context) that attend to every token and that every token
        attends to.
    """

    index: torch.Tensor
    valid: torch.Tensor
    n_global: int


class GeneGraph(nn.Module):
    """A gene–gene neighbour list, saved with the model, that places each token's neighbours.

    Parameters
    ----------
    n_genes
        Genes of the model.
    slots
        Width of the neighbour list (self included), e.g. ``1 + max_degree``.
    """

    def __init__(self, n_genes: int, slots: int):
        super().__init__()
        neighbours = torch.full((n_genes, slots), -1, dtype=torch.long)
        neighbours[:, 0] = torch.arange(n_genes)
        self.register_buffer("neighbours", neighbours)

    @property
    def n_genes(self) -> int:
        """Genes in the graph."""
        return self.neighbours.shape[0]

    def set(self, neighbours) -> GeneGraph:
        """Replace the graph with ``(n_genes, ≤ slots)`` neighbour lists (``-1`` = none).

        Row ``g`` must list ``g`` itself; the graph should be symmetric.
        """
        neighbours = torch.as_tensor(neighbours, dtype=torch.long)
        n, width = neighbours.shape
        if n != self.n_genes or width > self.neighbours.shape[1]:
            raise ParameterError(
                f"Graph of shape {tuple(neighbours.shape)} does not fit {self.n_genes} genes "
                f"and {self.neighbours.shape[1]} slots."
            )
        if neighbours.min() < -1 or neighbours.max() >= n:
            raise ParameterError("Neighbour indices must be gene indices or -1.")
        if not (neighbours == torch.arange(n)[:, None]).any(1).all():
            raise ParameterError("Every gene must be its own neighbour.")
        self.neighbours.fill_(-1)
        self.neighbours[:, :width] = neighbours.to(self.neighbours.device)
        return self

    def token_neighbours(
        self, genes: torch.Tensor, padding_mask: torch.Tensor, n_global: int = 0
    ) -> TokenNeighbours:
        """Neighbour positions of each token of a batch of cells.

        Parameters
        ----------
        genes
            ``(batch, tokens)`` gene index of each token, ``-1`` for non-gene tokens.
        padding_mask
            ``(batch, tokens)``, True at padding (absent) tokens.
        n_global
            Leading global tokens.

        Returns
        -------
        A gene token's slots are the global tokens, then its graph neighbours present (and not
        padding) in the same cell. Global and padding tokens get a single slot (themselves); a
        sparse kernel computes the global rows densely.
        """
        b, t = genes.shape
        device = genes.device
        real = (genes >= 0) & ~padding_mask
        # position of each gene in each cell (-1 when absent); one extra column for "no gene"
        where = torch.full((b, self.n_genes + 1), -1, dtype=torch.long, device=device)
        positions = torch.arange(t, device=device).expand(b, t)
        where.scatter_(1, torch.where(real, genes, self.n_genes), positions.where(real, -1))
        where[:, -1] = -1
        nbr = self.neighbours[genes.clamp_min(0)]  # (b, t, slots) gene ids
        nbr = torch.where(nbr >= 0, nbr, self.n_genes)
        pos = where.gather(1, nbr.view(b, -1)).view(b, t, -1)
        valid = (pos >= 0) & real[..., None]
        index = pos.clamp_min(0)
        if n_global:
            glob = torch.arange(n_global, device=device).expand(b, t, n_global)
            gvalid = (~padding_mask[:, :n_global])[:, None, :] & real[..., None]
            index = torch.cat([glob, index], dim=-1)
            valid = torch.cat([gvalid.expand(b, t, n_global), valid], dim=-1)
        # rows that are not real gene tokens attend to themselves only (computed apart)
        index[~real] = positions[~real][:, None]
        valid[~real] = False
        valid[..., 0] |= ~real
        return TokenNeighbours(index=index, valid=valid, n_global=n_global)


class DenseAttention(nn.Module):
    """Softmax attention with :func:`torch.nn.functional.scaled_dot_product_attention`.

    The key-padding mask is passed as a ``(batch, 1, 1, keys)`` boolean view that SDPA broadcasts
    over heads and queries, so no ``(batch, heads, tokens, tokens)`` mask is ever materialised and
    fused (flash / memory-efficient) kernels are used where the hardware has them.
    """

    #: Whether the kernel attends along a gene graph: the module then fits a gene kNN graph on
    #: the training cells (attention options ``k``, ``max_degree``) and passes each batch's
    #: :class:`TokenNeighbours` to ``forward``.
    needs_gene_graph: bool = False

    def __init__(self, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
        neighbours: TokenNeighbours | None = None,
    ) -> torch.Tensor:
        """Attend over keys that are not padding (``neighbours`` is ignored)."""
        attn_mask = None
        if padding_mask is not None:
            attn_mask = ~padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )


class KnnAttention(DenseAttention):
    """Gene-graph attention: each gene token attends to its graph neighbours present in the cell.

    Global tokens (``<cls>``, context) attend to and are attended by every token. Cost and memory
    are ``O(tokens × slots)`` per head: keys and values are gathered per query in cache-sized
    chunks (see ``nn._neighbours.neighbour_attention``), never as a ``tokens × tokens`` score
    or mask. Needs the :class:`TokenNeighbours` of the batch.
    """

    needs_gene_graph = True

    def forward(self, q, k, v, padding_mask, neighbours=None):
        """Attend over the graph neighbours in ``neighbours``."""
        if neighbours is None:
            raise ParameterError(
                "attention='knn' needs the tokens' graph neighbours (TokenNeighbours); build "
                "them with GeneGraph.token_neighbours."
            )
        p = self.dropout if self.training else 0.0
        out = neighbour_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            neighbours.index,
            neighbours.valid,
            dropout=p,
        ).transpose(1, 2)
        g = neighbours.n_global
        if g:
            attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
            glob = F.scaled_dot_product_attention(
                q[:, :, :g], k, v, attn_mask=attn_mask, dropout_p=p
            )
            out = torch.cat([glob, out[:, :, g:]], dim=2)
        return out


class PerformerAttention(nn.Module):
    """FAVOR+ linear attention (Choromanski et al. 2021) with positive orthogonal random features.

    ``softmax(q·k/√d)`` is approximated by ``φ(q)·φ(k)`` with ``φ(x) = exp(w·x − |x|²/2) / √m``
    for ``m`` orthogonal Gaussian directions ``w`` (rows rescaled to chi-distributed norms), so
    attention costs ``O(tokens × m)``. The features are redrawn every ``redraw_interval`` training
    steps and fixed at inference (they are a buffer, saved with the model). Padding keys get zero
    features. Dropout removes whole keys from the numerator (a mask shared by all queries of a
    head), the normaliser keeps them, as softmax attention dropout does.

    Parameters
    ----------
    head_dim
        Width of a head.
    dropout
        Dropout on attention weights.
    n_features
        Random features ``m`` (default ``max(64, 4 * head_dim)``).
    redraw_interval
        Training forward passes between redraws (0 = never).
    eps
        Added to every feature after the ``exp`` (``performer-pytorch``, and so scBERT, add
        1e-4; it keeps the normaliser away from zero). With ``eps`` the stabilising maximum is
        performer-pytorch's too (over the projection before the ``|x|²/2`` term), so that its
        checkpoints give the same outputs.
    """

    def __init__(
        self,
        head_dim: int,
        dropout: float = 0.0,
        n_features: int | None = None,
        redraw_interval: int = 1000,
        eps: float = 0.0,
    ):
        super().__init__()
        self.eps = eps
        self.dropout = dropout
        self.head_dim = head_dim
        self.n_features = n_features or max(64, 4 * head_dim)
        self.redraw_interval = redraw_interval
        self.register_buffer("projection", self.draw())
        self._calls = 0

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``(n_features, head_dim)`` positive orthogonal random directions."""
        d, m = self.head_dim, self.n_features
        gauss = torch.randn(math.ceil(m / d), d, d, generator=generator)
        q, r = torch.linalg.qr(gauss)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar rotations
        w = q.transpose(-1, -2).reshape(-1, d)[:m]  # rows of each block are orthonormal
        norms = torch.randn(m, d, generator=generator).norm(dim=1)
        return w * norms[:, None]

    def redraw(self) -> None:
        """Draw new features (in place)."""
        self.projection.copy_(self.draw().to(self.projection))

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """φ(x) for ``x`` ``(batch, heads, tokens, head_dim)`` (scaled by ``head_dim ** -0.25``).

        A maximum is subtracted inside ``exp`` for stability (per query row; over all keys of a
        head for keys) — a constant that cancels in the attention ratio.
        """
        x = x * self.head_dim**-0.25
        dash = x @ self.projection.to(x.dtype).T
        proj = dash - (x * x).sum(-1, keepdim=True) / 2
        dims = (-1,) if is_query else (-1, -2)
        # with eps the constant no longer cancels: take performer-pytorch's (the maximum of the
        # projection before the norm term), so that its checkpoints give the same outputs
        stab = (dash if self.eps else proj).detach().amax(dim=dims, keepdim=True)
        return (torch.exp(proj - stab) + self.eps) / math.sqrt(self.n_features)

    def forward(self, q, k, v, padding_mask, neighbours=None):
        """Linear attention over keys that are not padding (``neighbours`` is ignored)."""
        if self.training and self.redraw_interval:
            if self._calls and self._calls % self.redraw_interval == 0:
                self.redraw()
            self._calls += 1
        qf = self.features(q, is_query=True)
        kf = self.features(k, is_query=False)
        if padding_mask is not None:
            kf = kf.masked_fill(padding_mask[:, None, :, None], 0.0)
        denominator = qf @ kf.sum(2).unsqueeze(-1)  # (b, h, t, 1)
        if self.training and self.dropout > 0:
            keep = torch.rand(kf.shape[:-1], device=kf.device) >= self.dropout
            kf = kf * keep.unsqueeze(-1) / (1.0 - self.dropout)
        context = kf.transpose(-1, -2) @ v  # (b, h, m, head_dim)
        return (qf @ context) / denominator.clamp_min(torch.finfo(qf.dtype).tiny)


#: Attention kernels by name; each is built as ``cls(head_dim, dropout=..., **options)``.
ATTENTION: dict[str, type[nn.Module]] = {
    "dense": DenseAttention,
    "knn": KnnAttention,
    "performer": PerformerAttention,
}


def register_attention(name: str, kernel: type[nn.Module] | None = None):
    """Register an attention kernel under ``name`` (usable as a class decorator).

    A kernel is an :class:`torch.nn.Module` built as ``kernel(head_dim, dropout=...,
    **attention_options)`` whose ``forward(q, k, v, padding_mask, neighbours=None)`` maps
    ``(batch, heads, tokens, head_dim)`` queries, keys and values (``padding_mask``: ``(batch,
    tokens)``, ``True`` at padding) to the attended values, same shape. A class attribute
    ``needs_gene_graph = True`` asks for a gene kNN graph (see :class:`KnnAttention`).
    Afterwards ``attention=name`` works everywhere a kernel is named (models, ``pretrain``,
    :class:`~cellformer.nn.EncoderConfig`).

    Examples
    --------
    >>> @cf.nn.register_attention("mine")
    ... class MyAttention(cf.nn.DenseAttention): ...
    >>> model = cf.model.CellTransformer(adata, attention="mine")  # doctest: +SKIP
    """

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if not isinstance(name, str) or not name:
            raise ParameterError(f"An attention kernel needs a name, got {name!r}.")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ParameterError(
                f"An attention kernel must be a torch.nn.Module class, got {cls!r}."
            )
        if ATTENTION.get(name, cls) is not cls:
            raise ParameterError(
                f"Attention {name!r} is already registered ({ATTENTION[name].__name__})."
            )
        ATTENTION[name] = cls
        return cls

    return add if kernel is None else add(kernel)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: QKV projection, a kernel from :data:`~cellformer.nn.ATTENTION`, projection.

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
        Name of the kernel in :data:`~cellformer.nn.ATTENTION`.
    attention_options
        Keyword arguments of the kernel (e.g. ``{"n_features": 256}`` for ``"performer"``).
    head_dim
        Width of a head (default ``d_model // n_heads``); given explicitly for pruned layers,
        whose heads keep their width while there are fewer of them.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        attention: str = "dense",
        attention_options: dict | None = None,
        head_dim: int | None = None,
    ):
        super().__init__()
        if head_dim is None:
            if d_model % n_heads:
                raise ParameterError(f"n_heads={n_heads} must divide d_model={d_model}.")
            head_dim = d_model // n_heads
        if n_heads < 1:
            raise ParameterError(f"n_heads must be at least 1, got {n_heads}.")
        if attention not in ATTENTION:
            raise ParameterError(
                f"Unknown attention {attention!r}; choose from {sorted(ATTENTION)}."
            )
        self.n_heads = n_heads
        self.head_dim = head_dim
        inner = n_heads * head_dim  # below d_model once heads are pruned
        self.qkv = nn.Linear(d_model, 3 * inner)
        self.out = nn.Linear(inner, d_model)
        try:
            self.kernel = ATTENTION[attention](
                self.head_dim, dropout=dropout, **(attention_options or {})
            )
        except TypeError as err:
            raise ParameterError(
                f"Bad attention_options {attention_options} for attention={attention!r}: {err}."
            ) from None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, d_model) → (batch, heads, tokens, head_dim)``."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, tokens, head_dim) → (batch, tokens, d_model)``."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        neighbours: TokenNeighbours | None = None,
    ) -> torch.Tensor:
        """Self-attention over ``x`` ``(batch, tokens, d_model)``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = self.kernel(
            self.split_heads(q), self.split_heads(k), self.split_heads(v), padding_mask, neighbours
        )
        return self.out(self.merge_heads(out))
