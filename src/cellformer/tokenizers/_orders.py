"""Token orders (F_C) as registered parts: how a cell's gene tokens are ordered and kept.

An order gives every candidate token of a cell a sort key; tokens are taken by descending key
(ties in gene order) and, past ``max_length``, the first are kept. It also says what it needs
and what it carries (attributes of :class:`TokenOrder`). Adding an order is one
:class:`TokenOrder` and :func:`register_order`; ``TokenizerConfig(order=name)`` then takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cellformer._errors import ParameterError

__all__ = ["ORDER", "TokenOrder", "register_order"]


@dataclass(frozen=True)
class TokenOrder:
    """One token order.

    Parameters
    ----------
    key
        ``key(tokenizer, values, genes, generator)``: the sort key of each candidate token
        (``values``: log-normalised values, ``genes``: gene indices; higher keys come first).
        Keys must be finite and non-negative: they are compared through their float bits.
    informative
        The position of a token carries information (a positional embedding is then added by
        default).
    gene_order
        Kept tokens are put back in the model's gene order (the key only chooses which to keep).
    needs_fit
        The key reads statistics of the training cells (``Tokenizer.fit``, e.g. gene medians).
    coarse
        Keys within float rounding (about 3e-5 apart) tie, so that equal ratios do not depend on
        how they were rounded.
    """

    key: Callable[..., torch.Tensor]
    informative: bool = True
    gene_order: bool = False
    needs_fit: bool = False
    coarse: bool = False


#: Token orders by name: the built-in ones and those given to :func:`register_order`.
ORDER: dict[str, TokenOrder] = {}


def register_order(name: str, order: TokenOrder) -> None:
    """Make ``order`` available as ``TokenizerConfig(order=name)``."""
    if not isinstance(order, TokenOrder):
        raise ParameterError(f"order must be a TokenOrder, got {type(order).__name__}.")
    if name in ORDER:
        raise ParameterError(f"Token order {name!r} is already registered.")
    ORDER[name] = order


def _by_value(tokenizer, values, genes, generator):
    return values


def _rank(tokenizer, values, genes, generator):
    # Geneformer: normalised counts over the gene's median non-zero value in training cells
    return torch.expm1(values) / tokenizer.median[genes]


def _random(tokenizer, values, genes, generator):
    return torch.rand(values.shape, generator=generator, device=values.device, dtype=values.dtype)


register_order("rank", TokenOrder(_rank, needs_fit=True, coarse=True))
register_order("expression", TokenOrder(_by_value))
register_order("fixed", TokenOrder(_by_value, informative=False, gene_order=True))
register_order("random", TokenOrder(_random, informative=False))
