"""The transformer's linear path: a LinearClassifier fit on the training cells, frozen."""

from __future__ import annotations

import contextlib
import logging
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core
from cellformer._errors import ParameterError
from cellformer._utils import preserved_random_state, quiet_training, subsample

from ._path_guard import choose_path
from .base._setup import internal_setup

__all__ = ["LinearPathMixin"]

logger = logging.getLogger("cellformer")


class LinearPathMixin:
    """Fits ``module.linear`` exactly as :class:`~cellformer.model.LinearClassifier` is fit."""

    #: Most training cells the linear path is fit on (a seeded subsample beyond).
    linear_path_max_cells: int = 50_000
    #: Seed of the linear path's fit (set by :meth:`train`); the outer random stream is untouched.
    _linear_path_seed: int | None = 0
    #: Set inside :meth:`_linear_path_fixed_on`: ``train`` neither refits the linear path on
    #: its training split nor on every labelled cell at the end.
    _linear_path_fixed: bool = False

    # -- hooks of CellformerModel.train ----------------------------------------------------------
    def _prepare_training(self, validation_size: float, seed: int | None):
        self._linear_path_seed = seed
        return super()._prepare_training(validation_size, seed)

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        if self.module.linear is not None and not self._linear_path_fixed:
            # training split only, so that the validation loss judges the model honestly
            # (refit on every labelled cell after training)
            self._fit_linear_path(train_idx)
        super()._fit_training_statistics(train_idx)

    def _after_training(self, train_idx, val_idx, *args) -> None:
        guarded = self.module.linear is not None and len(val_idx) and not self._linear_path_fixed
        if not self._linear_path_fixed:  # (prune's inner training keeps the record it has)
            # before the Unknown thresholds and the temperature: they are fit on the chosen model
            self.path_choice_ = choose_path(self, np.sort(val_idx)) if guarded else None
        super()._after_training(train_idx, val_idx, *args)
        if guarded:
            # the validation cells have done their job (judging the model, setting the Unknown
            # thresholds): the path now uses every labelled cell, as LinearClassifier does. With
            # the head dropped by the guard the path is the whole model: C is chosen again on
            # every labelled cell, so that it *is* LinearClassifier (C chosen on the training
            # split alone swung between 0.003 and 3 across the main job's folds)
            alone = (self.path_choice_ or {}).get("chosen") == "linear path alone"
            self._refit_linear_path_on_all_labels(choose_C=alone)

    @contextlib.contextmanager
    def _linear_path_fixed_on(self, train_idx: np.ndarray):
        """Fit the linear path on ``train_idx`` and keep it there; on exit, refit on all labels.

        :meth:`prune` judges its steps on validation cells the path must not have seen.
        """
        if self.module.linear is None:
            yield
            return
        chosen = getattr(self, "_linear_path_C", "auto")  # train()'s choice, for the refit
        self._fit_linear_path(np.sort(train_idx))
        self._linear_path_fixed = True
        try:
            yield
        finally:
            self._linear_path_fixed = False
            self._linear_path_C = chosen
            self._refit_linear_path_on_all_labels()

    def _refit_linear_path_on_all_labels(self, choose_C: bool = False) -> None:
        """Refit the path on every labelled cell with the ``C`` its training-split fit chose.

        ``choose_C``: choose ``C`` again by cross-validation on these cells (the head is zero).
        """
        labelled = np.flatnonzero(self._train_labels() < self.n_classes)
        C = "auto" if choose_C else getattr(self, "_linear_path_C", "auto")
        self._fit_linear_path(labelled, C=C)

    def use_linear_path(self, linear) -> None:
        """Make a trained linear model this model's frozen linear path, instead of fitting one.

        E.g. a published CellTypist model
        (:meth:`~cellformer.model.LinearClassifier.from_celltypist`): training then starts at
        its predictions, the head starts at zero and the transformer learns what it misses.
        Genes are matched by name (mapped across naming schemes); the model's genes that
        ``linear`` lacks get no weight, its classes absent from this model's labels are
        dropped (with a warning), and this model's classes that it lacks start at a logit of
        -20. ``train`` keeps the path as it is (it is not refit on the training cells).

        Parameters
        ----------
        linear
            A trained :class:`~cellformer.model.LinearClassifier`.
        """
        from ._linear import LinearClassifier

        if self.module.linear is None:
            raise ParameterError(
                "This model was built with linear_path=False: it has no linear path."
            )
        if not isinstance(linear, LinearClassifier) or not linear.is_trained_:
            raise ParameterError(f"linear must be a trained LinearClassifier, got {linear!r}.")
        rows = pd.Index(linear.classes).get_indexer(self.classes)
        if (rows < 0).all():
            raise _core.InputError(
                f"The linear model's classes ({', '.join(linear.classes[:5])}, ...) share no "
                f"name with this model's ({', '.join(self.classes[:5])}, ...)."
            )
        dropped = sorted(set(linear.classes) - set(self.classes))
        if dropped:
            logger.warning(
                "%d classes of the linear model are not labels of this model and are left out: %s.",
                len(dropped),
                ", ".join(dropped[:10]),
            )
        pos, mapping, _ = _core.match_genes(self.var_names, linear.var_names)
        genes = np.flatnonzero(pos >= 0)
        logger.info(
            "Linear path from %s: %d of this model's %d genes have weights%s.",
            type(linear).__name__,
            len(genes),
            len(self.var_names),
            f" ({mapping.summary()})" if mapping is not None else "",
        )
        source = linear.module
        weight = torch.zeros_like(self.module.linear.weight)
        bias = torch.full_like(self.module.linear.bias, -20.0)
        mean = torch.zeros_like(self.module.linear_mean)
        scale = torch.ones_like(self.module.linear_scale)
        known = np.flatnonzero(rows >= 0)
        with torch.no_grad():
            W = source.linear.weight.detach().to(weight)[rows[known]]
            weight[np.ix_(known, genes)] = W[:, pos[genes]]
            bias[known] = source.linear.bias.detach().to(bias)[rows[known]]
            mean[genes] = source.mean.to(mean)[pos[genes]]
            scale[genes] = source.std.to(scale)[pos[genes]]
            self.module.linear.weight.copy_(weight)
            self.module.linear.bias.copy_(bias)
            self.module.linear_mean.copy_(mean)
            self.module.linear_scale.copy_(scale)
        self.module.linear.requires_grad_(False)
        self.linear_path_source_ = {
            "model": type(linear).__name__,
            **(getattr(linear, "source_", None) or {}),
        }

    def _fit_linear_path(self, train_idx: np.ndarray, C: float | str = "auto") -> None:
        """Fit the linear path on training cells exactly as :class:`LinearClassifier` is fit; freeze it.

        The path is a :class:`~cellformer.model.LinearClassifier` (same objective and solver)
        trained on these cells, so the transformer starts at the baseline. ``C="auto"`` chooses the
        L2 strength by cross-validation on these cells and remembers it: the refit on every
        labelled cell at the end of :meth:`train` reuses it, as ``LogisticRegressionCV`` refits
        with its chosen ``C`` (the search is most of the path's cost).
        """
        from ._linear import LinearClassifier

        if getattr(self, "linear_path_source_", None) is not None:
            return  # a given linear model (use_linear_path) stays as it is
        X = self._training_matrix()
        labels = self._train_labels()
        idx = subsample(train_idx, self.linear_path_max_cells, seed=0)
        classes = np.asarray(self.classes)
        key = "_cellformer_label"
        cells = ad.AnnData(
            X=X[idx],
            obs=pd.DataFrame({key: classes[labels[idx]]}, index=np.arange(len(idx)).astype(str)),
        )
        library = self._library(self.adata)
        library_key = None
        if library is not None:  # counts of a gene subset: keep the whole-transcriptome sizes
            library_key = _core.LIBRARY_KEY
            cells.obs[library_key] = library[idx]
        start = time.perf_counter()
        with quiet_training(), preserved_random_state(), internal_setup():
            LinearClassifier.setup_anndata(cells, labels_key=key, library_size_key=library_key)
            baseline = LinearClassifier(cells, C=C)
            baseline.train(seed=self._linear_path_seed, enable_progress_bar=False, novelty=False)
        rows = pd.Index(classes).get_indexer(baseline.classes)
        weight = torch.zeros_like(self.module.linear.weight)
        bias = torch.full_like(self.module.linear.bias, -20.0)  # classes absent from training
        with torch.no_grad():
            weight[rows] = baseline.module.linear.weight.detach().to(weight)
            bias[rows] = baseline.module.linear.bias.detach().to(bias)
            self.module.linear.weight.copy_(weight)
            self.module.linear.bias.copy_(bias)
            self.module.linear_mean.copy_(baseline.module.mean)
            self.module.linear_scale.copy_(baseline.module.std)
        self.module.linear.requires_grad_(False)
        self._linear_path_C = baseline.C_
        logger.info(
            "Linear path fit on %d training cells (C = %g%s) in %.1f s (frozen).",
            len(idx),
            baseline.C_,
            ", chosen by cross-validation" if C == "auto" else "",
            time.perf_counter() - start,
        )
