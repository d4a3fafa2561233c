"""Distance-to-training novelty score: how unlike every training cell a cell's expression is."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.extmath import randomized_svd
from torch import nn

from cellformer._errors import ParameterError

__all__ = ["NoveltyScorer"]


class NoveltyScorer(nn.Module):
    """Mean distance to the ``k`` nearest training cells in a PCA of standardised expression.

    A classifier's softmax has to spread a cell of an unseen type over the known types; when the
    unseen type resembles one of them (NK cells next to cytotoxic T cells) it does so confidently,
    and entropy or mutual information cannot flag it. A cell of an unseen type is, however, far
    from the *training cells* in expression space. This module keeps what that distance needs,
    all fit on training cells: per-gene mean and scale of log-normalised expression, the top
    principal axes, and the projections of (up to ``max_reference``) training cells.

    Everything is a buffer, so it is saved and loaded with the model; an unfitted scorer returns
    NaN. Buffers take the shapes of a loaded state dict (they depend on the training data).

    Parameters
    ----------
    n_input
        Number of genes (the model's gene order).
    n_components
        Principal axes kept (fewer when there are fewer cells or genes).
    n_neighbors
        Training cells averaged over for each cell's distance.
    max_reference
        Most training cells kept as reference (a random subsample beyond it); it bounds the memory
        of the saved model and the cost per scored cell.
    clip
        Standardised values are clipped to ``±clip`` (as ``sc.pp.scale(max_value=...)``).
    """

    def __init__(
        self,
        n_input: int,
        n_components: int = 50,
        n_neighbors: int = 10,
        max_reference: int = 4000,
        clip: float = 10.0,
    ):
        super().__init__()
        if n_components < 1 or n_neighbors < 1 or max_reference < 1:
            raise ParameterError("n_components, n_neighbors and max_reference must be at least 1.")
        self.n_input = n_input
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.max_reference = max_reference
        self.clip = clip
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("scale", torch.ones(0))
        self.register_buffer("components", torch.zeros(0, 0))
        self.register_buffer("reference", torch.zeros(0, 0))
        # score above which a cell is called novel; chosen on validation cells (NaN: none)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` was called (or a fitted state loaded)."""
        return self.reference.shape[0] > 0

    def fit(self, x: np.ndarray, seed: int | None = 0) -> NoveltyScorer:
        """Fit on log-normalised expression of training cells, ``(cells, n_input)``.

        ``x`` should already be a subsample when the training set is large (the model passes at
        most ``max_reference`` cells).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_input:
            raise ParameterError(f"Expected (cells, {self.n_input}) expression, got {x.shape}.")
        if x.shape[0] < 2:
            raise ParameterError("The novelty score needs at least 2 training cells.")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-8] = 1.0
        z = np.clip((x - mean) / scale, -self.clip, self.clip)
        n_comp = min(self.n_components, x.shape[0] - 1, x.shape[1])
        # axes of the clipped values, centred again; projections skip the centring, as a shift
        # changes no distance
        _, _, vt = randomized_svd(z - z.mean(axis=0), n_comp, random_state=seed)
        components = vt.T
        device = self.threshold.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
        self.components = torch.as_tensor(components, dtype=torch.float32, device=device)
        self.reference = self._project(torch.as_tensor(x, dtype=torch.float32, device=device))
        self.threshold.fill_(float("nan"))
        return self

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        # unmeasured genes (NaN) sit at the training mean
        z = torch.nan_to_num((x - self.mean) / self.scale, nan=0.0).clamp(-self.clip, self.clip)
        return z @ self.components

    @torch.no_grad()
    def forward(self, x: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
        """Novelty scores ``(cells,)`` of log-normalised expression ``x`` (NaN when unfitted)."""
        if not self.is_fitted:
            return torch.full((x.shape[0],), float("nan"), device=x.device)
        k = min(self.n_neighbors, self.reference.shape[0])
        out = []
        for start in range(0, x.shape[0], chunk_size):
            p = self._project(x[start : start + chunk_size].float())
            d = torch.cdist(p, self.reference)
            out.append(d.topk(k, dim=1, largest=False).values.mean(dim=1))
        if not out:
            return torch.zeros(0, device=x.device)
        return torch.cat(out)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the fitted buffers' shapes depend on the training data: take those of the state dict
        for name in ("mean", "scale", "components", "reference"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.threshold.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
