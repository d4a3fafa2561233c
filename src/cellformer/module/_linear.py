"""Multinomial logistic regression on standardised log-normalised expression."""

from __future__ import annotations

import torch
from torch import nn

from ._classifier import ClassifierModuleBase

__all__ = ["LinearModule"]


class LinearModule(ClassifierModuleBase):
    """Standardise, then one linear layer to class logits.

    Parameters
    ----------
    n_input
        Number of genes.
    n_labels
        Number of cell types.
    input_kind
        ``"counts"`` or ``"lognorm"`` (see :class:`ClassifierModuleBase`).
    l2
        L2 penalty on the weights (not the bias), per training cell: the loss is
        ``mean weighted CE + l2 / 2 * ||W||²``. ``l2 = 1 / (C * n_train)`` reproduces scikit-learn's
        ``LogisticRegression(C=C)`` objective up to a constant factor.
    one_vs_rest
        Probabilities are each class's ``sigmoid(logit)`` (one-vs-rest, as CellTypist reports
        them) instead of the softmax over classes; such a module computes in float64.
    clip
        Standardised values above it are set to it (CellTypist clips at 10); ``None``: none.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        input_kind: str = "lognorm",
        l2: float = 0.0,
        one_vs_rest: bool = False,
        clip: float | None = None,
    ):
        super().__init__(n_input, n_labels, input_kind)
        self.l2 = l2
        self.one_vs_rest = one_vs_rest
        self.clip = clip
        self.register_buffer("mean", torch.zeros(n_input))
        self.register_buffer("std", torch.ones(n_input))
        self.linear = nn.Linear(n_input, n_labels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if one_vs_rest:  # probabilities near 0 and 1 need float64 to be told apart
            self.double()

    def encode(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised expression; unmeasured genes (NaN) get 0, the training mean."""
        z = torch.nan_to_num((x - self.mean) / self.std, nan=0.0)
        return z if self.clip is None else z.clamp_max(self.clip)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the multinomial model."""
        return self.linear(z)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class linear scores without the bias: a low-dimensional, class-separating embedding."""
        return self.encode(x) @ self.linear.weight.T

    def penalty(self) -> torch.Tensor:
        """``l2 / 2 * ||W||²``."""
        return 0.5 * self.l2 * (self.linear.weight**2).sum()
