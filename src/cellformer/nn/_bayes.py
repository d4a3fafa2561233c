"""Bayesian layers and Monte-Carlo predictive summaries."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cellformer._errors import ParameterError

__all__ = ["BayesianLinear", "kl_divergence", "mc_sampling", "predictive_summary"]


class BayesianLinear(nn.Module):
    """Linear layer with mean-field Gaussian weights, sampled by local reparameterisation.

    Weights and biases have posteriors ``N(μ, σ²)`` with ``σ = softplus(ρ)``; the prior is
    ``N(0, s²)`` with ``s = prior_sigma``, learned when ``learn_prior=True``. With local
    reparameterisation the pre-activations are sampled, not the weights:
    ``out ~ N(x μᵀ + b, x² σ²ᵀ + σ_b²)``, one draw per cell, which lowers gradient variance.

    Outputs are sampled in training and inside :func:`mc_sampling`; otherwise the layer returns
    the mean (a deterministic prediction).

    Parameters
    ----------
    in_features, out_features
        As :class:`torch.nn.Linear`.
    prior_sigma
        Prior standard deviation ``s``.
    learn_prior
        Learn ``log s`` (one scalar per layer) instead of fixing it.
    init_sigma
        Initial posterior standard deviation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        prior_sigma: float = 1.0,
        learn_prior: bool = False,
        init_sigma: float = 1e-3,
    ):
        super().__init__()
        if prior_sigma <= 0 or init_sigma <= 0:
            raise ParameterError("prior_sigma and init_sigma must be positive.")
        self.in_features, self.out_features = in_features, out_features
        base = nn.Linear(in_features, out_features)
        self.weight_mu = nn.Parameter(base.weight.detach().clone())
        self.bias_mu = nn.Parameter(base.bias.detach().clone())
        rho = math.log(math.expm1(init_sigma))  # softplus⁻¹
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho))
        log_prior = torch.tensor(math.log(prior_sigma))
        if learn_prior:
            self.prior_log_sigma = nn.Parameter(log_prior)
        else:
            self.register_buffer("prior_log_sigma", log_prior)
        self.sampling = False

    @classmethod
    def from_linear(cls, layer: nn.Linear, **kwargs) -> BayesianLinear:
        """Build a Bayesian layer whose posterior means are ``layer``'s (trained) weights."""
        new = cls(layer.in_features, layer.out_features, **kwargs)
        with torch.no_grad():
            new.weight_mu.copy_(layer.weight)
            if layer.bias is not None:
                new.bias_mu.copy_(layer.bias)
            else:
                new.bias_mu.zero_()
        return new.to(layer.weight.device).train(layer.training)

    @property
    def weight_sigma(self) -> torch.Tensor:
        """Posterior standard deviations of the weights."""
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor:
        """Posterior standard deviations of the biases."""
        return F.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sample pre-activations (training, :func:`mc_sampling`); return the mean otherwise."""
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        if not (self.training or self.sampling):
            return mean
        var = F.linear(x * x, self.weight_sigma**2, self.bias_sigma**2)
        return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        """KL(posterior ‖ prior), summed over weights and biases."""
        prior_sigma = self.prior_log_sigma.exp()
        return kl_divergence(self.weight_mu, self.weight_sigma, prior_sigma) + kl_divergence(
            self.bias_mu, self.bias_sigma, prior_sigma
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor, prior_sigma) -> torch.Tensor:
    """``Σ KL(N(μ, σ²) ‖ N(0, s²))`` = ``Σ log(s/σ) + (σ² + μ²) / (2 s²) − ½``."""
    prior_sigma = torch.as_tensor(prior_sigma, dtype=mu.dtype, device=mu.device)
    ratio = (sigma**2 + mu**2) / (2 * prior_sigma**2)
    return (torch.log(prior_sigma) - torch.log(sigma) + ratio - 0.5).sum()


@contextmanager
def mc_sampling(module: nn.Module, dropout: bool = False) -> Iterator[nn.Module]:
    """Sample Bayesian layers (and, with ``dropout=True``, dropout: MC dropout) at inference.

    Other layers (LayerNorm, BatchNorm) stay in evaluation mode. States are restored on exit.
    """
    bayes = [m for m in module.modules() if isinstance(m, BayesianLinear)]
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout)] if dropout else []
    before = [m.training for m in drops]
    try:
        for m in bayes:
            m.sampling = True
        for m in drops:
            m.train()
        yield module
    finally:
        for m in bayes:
            m.sampling = False
        for m, state in zip(drops, before, strict=True):
            m.train(state)


def predictive_summary(logits: torch.Tensor, one_vs_rest: bool = False) -> dict[str, torch.Tensor]:
    """Average Monte-Carlo samples as *probabilities* and split the uncertainty.

    Parameters
    ----------
    logits
        ``(samples, cells, classes)``.
    one_vs_rest
        Each class's probability is ``sigmoid(logit)`` (one-vs-rest classifiers such as
        CellTypist's; they need not sum to 1) instead of the softmax; the entropies are those
        of the probabilities normalised to sum to 1.

    Returns
    -------
    ``probs`` (mean probability), ``std`` (per-class standard deviation over samples),
    ``entropy`` (total: entropy of the mean, in nats), ``expected_entropy`` (aleatoric: mean of the
    samples' entropies) and ``mutual_info`` (epistemic: their difference, ≥ 0).
    """
    if one_vs_rest:
        scores = logits.sigmoid()
        probs = scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
        log_probs = probs.clamp_min(1e-12).log()
    else:
        scores = probs = logits.softmax(-1)
        log_probs = logits.log_softmax(-1)
    mean = probs.mean(0)
    log_mean = mean.clamp_min(1e-12).log()
    total = -(mean * log_mean).sum(-1)
    expected = -(probs * log_probs).sum(-1).mean(0)
    return {
        "probs": scores.mean(0),
        "std": scores.std(0, unbiased=False),
        "entropy": total,
        "expected_entropy": expected,
        "mutual_info": (total - expected).clamp_min(0.0),
    }
