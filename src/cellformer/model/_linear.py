"""Class-balanced multinomial logistic regression with the scvi-tools model API."""

from __future__ import annotations

import anndata as ad
import numpy as np
import torch

from cellformer import pp
from cellformer.module import LinearModule

from ._base import CellformerModel

__all__ = ["LinearClassifier"]


class LinearClassifier(CellformerModel):
    """Class-balanced multinomial logistic regression on standardised log-normalised expression.

    The baseline every cellformer transformer is measured against. Trained by minibatch AdamW
    through Lightning, so it scales to millions of cells; the standardisation statistics are
    streamed over the training cells only. The objective is scikit-learn's
    ``LogisticRegression(C=C, class_weight="balanced")`` divided by ``C * n_train``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    C
        Inverse L2 regularisation strength, as in scikit-learn.
    registry, input_kind
        Internal (used by :meth:`load`).

    Examples
    --------
    >>> import cellformer as cf
    >>> adata = cf.datasets.pbmc68k_reduced()
    >>> cf.model.LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = cf.model.LinearClassifier(adata)
    >>> model.train()
    >>> model.predict()  # writes adata.obs["cellformer_prediction"]
    """

    _module_cls = LinearModule
    _plan_defaults = {"lr": 1e-2, "warmup_fraction": 0.02}

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        C: float = 1.0,
        registry: dict | None = None,
        input_kind: str | None = None,
    ):
        super().__init__(adata, registry=registry, input_kind=input_kind)
        if C <= 0:
            raise ValueError(f"C must be positive, got {C}.")
        self.C = C
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_labels=self.n_classes,
            input_kind=self.input_kind_,
        )
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        X = self._training_matrix()
        mean, std = pp.fit_scaler(X, self.input_kind_, train_idx, library=self._library(self.adata))
        self.module.mean.copy_(torch.as_tensor(mean))
        self.module.std.copy_(torch.as_tensor(std))
        self.module.l2 = 1.0 / (self.C * len(train_idx))

    def _latent(self, x: torch.Tensor, extra: dict) -> torch.Tensor:
        return self.module.latent(x)

    def _describe(self) -> str:
        return f"C={self.C:g}"

    def train(self, max_epochs: int | None = None, validation_size: float = 0.0, **kwargs):
        """Train; see :meth:`CellformerModel.train`.

        The problem is convex, so by default all labelled cells are used for fitting
        (``validation_size=0``) and no model selection happens.
        """
        return super().train(max_epochs=max_epochs, validation_size=validation_size, **kwargs)
