"""Special tokens and :class:`~cellformer.tokenizers.Tokens`, the tokenizer's output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CLS", "MASK", "N_SPECIAL", "PAD", "SEP", "SPECIAL_TOKENS", "Tokens"]

#: Special tokens, in vocabulary order: ids 0..3. Gene ``i`` of the model has id ``N_SPECIAL + i``.
SPECIAL_TOKENS = ("<pad>", "<cls>", "<mask>", "<sep>")
PAD, CLS, MASK, SEP = range(len(SPECIAL_TOKENS))
N_SPECIAL = len(SPECIAL_TOKENS)


@dataclass
class Tokens:
    """A batch of tokenised cells (all tensors ``(cells, tokens)``).

    Attributes
    ----------
    ids
        Vocabulary ids: special tokens, then ``N_SPECIAL + gene index``, then context tokens.
    values
        Log-normalised expression of gene tokens, or its per-gene z-score when the config has
        ``value_scale="zscore"`` (0 for special and padding tokens).
    bins
        Expression bins of gene tokens (0 = zero), or ``None`` when the config has no bins.
    padding_mask
        True at padding tokens.
    n_prefix
        Number of leading special / context tokens (``<cls>``, batch); gene tokens follow.
    value_mask
        True where the expression value is hidden (masked-expression pretraining); ``None``
        when nothing is hidden.
    segments
        With a paired tokenizer: 0 for the current time point's tokens (and the prefix), 1 from
        ``<sep>`` on; ``None`` otherwise.
    """

    ids: torch.Tensor
    values: torch.Tensor
    bins: torch.Tensor | None
    padding_mask: torch.Tensor
    n_prefix: int
    value_mask: torch.Tensor | None = None
    segments: torch.Tensor | None = None

    @property
    def gene_mask(self) -> torch.Tensor:
        """True at gene tokens (not special, context or padding)."""
        mask = self.ids >= N_SPECIAL
        mask[:, : self.n_prefix] = False
        return mask

    def numpy(self) -> dict[str, np.ndarray]:
        """Return the tensors as numpy arrays."""
        out = {"ids": self.ids, "values": self.values, "padding_mask": self.padding_mask}
        if self.bins is not None:
            out["bins"] = self.bins
        if self.segments is not None:
            out["segments"] = self.segments
        return {k: v.cpu().numpy() for k, v in out.items()}
