"""Two time points per cell: ``<cls> current… <sep> previous…`` (``TokenizerConfig.paired``)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from cellformer._core.checks import PREVIOUS_SUFFIX
from cellformer._errors import ParameterError

from ._tokens import PAD, SEP, Tokens

__all__ = ["check_paired", "paired_tokens", "paired_widths", "split_budget"]


def split_budget(tokenizer, total: int | None) -> tuple[int | None, int | None]:
    """Split a token budget into ``(current, previous)`` (``previous_share`` to the latter)."""
    if total is None:
        return None, None
    previous = min(max(1, round(total * tokenizer.config.previous_share)), total - 1)
    return total - previous, previous


def paired_widths(tokenizer) -> list[int]:
    """Most gene tokens of each time point (its budget, or its genes when fewer)."""
    half = tokenizer.n_genes // 2
    genes = [int(tokenizer.gene_mask[:half].sum()), int(tokenizer.gene_mask[half:].sum())]
    budget = split_budget(tokenizer, tokenizer.config.max_length)
    return [n if b is None else min(n, b) for n, b in zip(genes, budget, strict=True)]


def paired_tokens(tokenizer, x, batch, generator, subsample, pad_to=None) -> Tokens:
    """``<cls> current… <sep> previous…``: each half tokenised with its share of the budget.

    With ``pad_to`` (any value) each half is padded to its most tokens, so that chunks of
    cells line up.
    """
    cfg = tokenizer.config
    half = tokenizer.n_genes // 2
    hidden = torch.full_like(x[:, :half], float("nan"))
    lengths, subsamples = (
        split_budget(tokenizer, cfg.max_length),
        split_budget(tokenizer, subsample),
    )
    widths = paired_widths(tokenizer) if pad_to is not None else [None, None]
    parts = []
    for i, values in enumerate(
        (torch.cat([x[:, :half], hidden], 1), torch.cat([hidden, x[:, half:]], 1))
    ):
        first = i == 0
        # a shallow copy with its own config (buffers shared): the tokenizer itself is never
        # changed, so concurrent calls (DataLoader workers, threads) see it as it is
        part = copy.copy(tokenizer)
        part.config = replace(
            cfg,
            paired=False,
            max_length=lengths[i],
            cls_token=cfg.cls_token and first,
            context=cfg.context if first else (),
        )
        part.n_batches = tokenizer.n_batches if first else 0
        parts.append(
            part.forward(values, batch if first else None, widths[i], generator, subsamples[i])
        )
    current, previous = parts
    n = x.shape[0]
    # the previous half's genes share the current genes' identity vectors
    previous_ids = torch.where(previous.gene_mask, previous.ids - half, previous.ids)
    sep = torch.full((n, 1), SEP, dtype=current.ids.dtype, device=x.device)
    zero = torch.zeros((n, 1), dtype=current.values.dtype, device=x.device)
    bins = None
    if current.bins is not None:
        bins = torch.cat([current.bins, zero.long(), previous.bins], 1)
    segments = torch.cat(
        [torch.zeros_like(current.ids), torch.ones_like(sep), torch.ones_like(previous.ids)], 1
    )
    return Tokens(
        torch.cat([current.ids, sep, previous_ids], 1),
        torch.cat([current.values, zero, previous.values], 1),
        bins,
        torch.cat([current.padding_mask, sep == PAD, previous.padding_mask], 1),
        current.n_prefix,
        segments=segments,
    )


def check_paired(genes: list[str]) -> None:
    half = len(genes) // 2
    if len(genes) % 2 or genes[half:] != [g + PREVIOUS_SUFFIX for g in genes[:half]]:
        raise ParameterError(
            "paired=True needs the genes followed by the same genes of the previous time point "
            f"(named gene + {PREVIOUS_SUFFIX!r}): build the AnnData with "
            "cellformer.pp.pair_timepoints(adata, previous)."
        )
